//! SentencePiece vocabularies as GGUF files carry them
//! (`tokenizer.ggml.model = "llama"`: Llama 2, Gemma, Phi-3, TinyLlama):
//! pieces with scores, spaces spelled `▁`, and byte tokens `<0xHH>` for
//! whatever no piece covers.
//!
//! The algorithm is llama.cpp's (`llm_tokenizer_spm_session`), step for
//! step, because the point is equal token ids: start from the characters,
//! repeatedly join the adjacent pair whose joined text is the
//! highest-scoring piece (ties to the leftmost pair), then spell every
//! symbol that is not a piece as its bytes. Special tokens are cut out of
//! the text first, longest first, as llama.cpp's `tokenizer_st_partition`
//! does, and each run of plain text between them gets the space prefix.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use arny_gguf::{GgufFile, Value};

use crate::{Result, TokenizerError, strings};

/// ggml's token types (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl Kind {
    fn from_gguf(t: i64) -> Self {
        match t {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Undefined,
        }
    }

    /// Cut out of the text before the pieces are joined.
    fn is_special(self) -> bool {
        matches!(self, Self::Control | Self::UserDefined | Self::Unknown)
    }
}

const SPACE: &str = "\u{2581}";

pub struct SpmTokenizer {
    ids: HashMap<String, u32>,
    texts: Vec<String>,
    scores: Vec<f32>,
    kinds: Vec<Kind>,
    /// Special tokens whose following whitespace is dropped (llama.cpp does
    /// this for Phi-3 models, recognised by name).
    rstrip: Vec<bool>,
    /// The special tokens, longest text first: the order the text is cut.
    specials: Vec<u32>,
    /// The token of each byte, for text no piece covers.
    byte_tokens: Box<[Option<u32>; 256]>,
    /// What a token stands for, as llama.cpp's `token_to_piece` with
    /// `special = true` spells it.
    bytes: Vec<Vec<u8>>,
    add_space_prefix: bool,
}

impl SpmTokenizer {
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let texts = strings(file, "tokenizer.ggml.tokens")?;
        let n = texts.len();
        let scores: Vec<f32> = match file.get("tokenizer.ggml.scores").and_then(Value::as_array) {
            Some(a) => a
                .iter()
                .map(|v| match v {
                    // -0.0 and 0.0 are one score to llama.cpp's `<`.
                    Value::F32(s) if s.is_finite() => Ok(*s + 0.0),
                    _ => Err(TokenizerError::Invalid(
                        "tokenizer.ggml.scores holds a value that is not a finite f32".into(),
                    )),
                })
                .collect::<Result<_>>()?,
            None => vec![0.0; n],
        };
        let kinds: Vec<Kind> = match file
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
        {
            Some(a) => a
                .iter()
                .map(|v| Kind::from_gguf(v.as_i64().unwrap_or(1)))
                .collect(),
            None => vec![Kind::Normal; n],
        };
        if scores.len() != n || kinds.len() != n {
            return Err(TokenizerError::Invalid(format!(
                "{n} tokens but {} scores and {} token types",
                scores.len(),
                kinds.len()
            )));
        }
        let mut ids = HashMap::with_capacity(n);
        for (i, t) in texts.iter().enumerate() {
            if ids.insert(t.clone(), i as u32).is_some() {
                return Err(TokenizerError::Invalid(format!(
                    "token `{t}` appears twice"
                )));
            }
        }
        let mut bytes = Vec::with_capacity(n);
        for (t, k) in texts.iter().zip(&kinds) {
            bytes.push(match k {
                Kind::Control | Kind::Unknown | Kind::UserDefined => t.as_bytes().to_vec(),
                Kind::Normal => t.replace(SPACE, " ").into_bytes(),
                Kind::Byte => vec![byte_of(t)?],
                // llama.cpp prints nothing for these.
                Kind::Unused | Kind::Undefined => Vec::new(),
            });
        }
        let mut byte_tokens = Box::new([None; 256]);
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            // llama.cpp falls back to the byte as a one-byte string, which
            // a UTF-8 vocabulary holds for ASCII only (and byte 0 looks up
            // the empty string, its C string).
            let alone = match b {
                0 => Some(String::new()),
                1..=0x7f => Some(char::from(b as u8).to_string()),
                _ => None,
            };
            *slot = ids
                .get(&format!("<0x{b:02X}>"))
                .or_else(|| alone.and_then(|t| ids.get(&t)))
                .copied();
        }
        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| kinds[i as usize].is_special())
            .collect();
        // Stable, so tokens of one length keep their id order (llama.cpp's
        // sort leaves that to its library; such ties only matter when two
        // specials of one length overlap in a text).
        specials.sort_by_key(|&i| std::cmp::Reverse(texts[i as usize].len()));
        let mut rstrip = vec![false; n];
        let name = file.get_str("general.name").unwrap_or("").to_lowercase();
        if name.contains("phi-3") || name.contains("phi3") {
            for &i in &specials {
                rstrip[i as usize] = true;
            }
            let mut set = |t: &str, on: bool| {
                if let Some(&i) = ids.get(t) {
                    rstrip[i as usize] = on;
                }
            };
            set("</s>", true);
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                set(t, false);
            }
        }
        let add_space_prefix = file
            .get("tokenizer.ggml.add_space_prefix")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        Ok(Self {
            ids,
            texts,
            scores,
            kinds,
            rstrip,
            specials,
            byte_tokens,
            bytes,
            add_space_prefix,
        })
    }

    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut after_special = true;
        for fragment in self.partition(text, parse_special) {
            match fragment {
                Fragment::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
                Fragment::Text(t) => {
                    let mut s = String::with_capacity(t.len() + 1);
                    if self.add_space_prefix && after_special {
                        s.push(' ');
                    }
                    s.push_str(t);
                    self.join_pieces(&s.replace(' ', SPACE), &mut out)?;
                    after_special = false;
                }
            }
        }
        Ok(out)
    }

    /// The text cut at special tokens: control and unknown ones only when
    /// `parse_special` asks, user-defined ones always (as llama.cpp and
    /// Hugging Face's tokenizers do).
    fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut fragments = vec![Fragment::Text(text)];
        for &id in &self.specials {
            let kind = self.kinds[id as usize];
            if !parse_special && matches!(kind, Kind::Control | Kind::Unknown) {
                continue;
            }
            let special = self.texts[id as usize].as_str();
            if special.is_empty() {
                continue;
            }
            let rstrip = self.rstrip[id as usize];
            let mut next = Vec::with_capacity(fragments.len());
            for f in fragments {
                let Fragment::Text(mut rest) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(at) = rest.find(special) {
                    if at > 0 {
                        next.push(Fragment::Text(&rest[..at]));
                    }
                    next.push(Fragment::Token(id));
                    rest = &rest[at + special.len()..];
                    if rstrip {
                        rest = rest
                            .trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
                    }
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// llama.cpp's `llm_tokenizer_spm_session::tokenize` on one run of
    /// text whose spaces are already `▁`.
    fn join_pieces(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        // Symbols are byte ranges of the text, linked into a list.
        let mut syms: Vec<Symbol> = text
            .char_indices()
            .map(|(at, c)| Symbol {
                start: at,
                len: c.len_utf8(),
                prev: None,
                next: None,
            })
            .collect();
        let count = syms.len();
        for (i, s) in syms.iter_mut().enumerate() {
            s.prev = i.checked_sub(1);
            s.next = (i + 1 < count).then_some(i + 1);
        }
        let mut queue = BinaryHeap::new();
        for i in 1..count {
            self.push_pair(text, &syms, i - 1, i, &mut queue);
        }
        while let Some(pair) = queue.pop() {
            let (l, r) = (pair.left, pair.right);
            // Stale: one side was merged into something else since.
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != pair.len {
                continue;
            }
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if let Some(n) = syms[r].next {
                syms[n].prev = Some(l);
            }
            if let Some(p) = syms[l].prev {
                self.push_pair(text, &syms, p, l, &mut queue);
            }
            if let Some(n) = syms[l].next {
                self.push_pair(text, &syms, l, n, &mut queue);
            }
        }
        let mut at = (count > 0).then_some(0);
        while let Some(i) = at {
            let s = &syms[i];
            let piece = &text[s.start..s.start + s.len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for &b in piece.as_bytes() {
                        out.push(self.byte_tokens[b as usize].ok_or_else(|| {
                            TokenizerError::Encode(format!(
                                "the vocabulary has no token for byte 0x{b:02X}"
                            ))
                        })?);
                    }
                }
            }
            at = s.next;
        }
        Ok(())
    }

    fn push_pair(
        &self,
        text: &str,
        syms: &[Symbol],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Pair>,
    ) {
        let start = syms[left].start;
        let len = syms[left].len + syms[right].len;
        if let Some(&id) = self.ids.get(&text[start..start + len]) {
            queue.push(Pair {
                score: self.scores[id as usize],
                left,
                right,
                len,
            });
        }
    }

    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize).map(Vec::as_slice)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.kinds
            .get(id as usize)
            .is_some_and(|k| matches!(k, Kind::Control | Kind::UserDefined))
    }

    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    /// See [`crate::Tokenizer::heap_bytes`]. Per token: its text in the
    /// map and the list and its bytes, each with a header, the map's slot,
    /// a score, a kind and a flag.
    pub fn heap_bytes(&self) -> u64 {
        let text: usize = self.texts.iter().map(String::len).sum();
        (3 * text + 150 * self.texts.len()) as u64
    }
}

enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

struct Symbol {
    start: usize,
    /// 0 once merged into the symbol on its left.
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate join. The heap pops the highest score first, and among
/// equal scores the leftmost pair, as llama.cpp's comparator orders them.
struct Pair {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Ord for Pair {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Pair {}

/// The byte of a `<0xHH>` token.
fn byte_of(text: &str) -> Result<u8> {
    text.strip_prefix("<0x")
        .and_then(|t| t.strip_suffix('>'))
        .filter(|h| h.len() == 2)
        .and_then(|h| u8::from_str_radix(h, 16).ok())
        .ok_or_else(|| TokenizerError::Invalid(format!("byte token `{text}` is not `<0xHH>`")))
}
