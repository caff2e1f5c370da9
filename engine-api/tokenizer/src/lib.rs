//! # arny-tokenizer
//!
//! The tokenizer for engines that do not have llama.cpp's, with
//! llama.cpp's token ids for the same text. Two kinds, as GGUF files name
//! them in `tokenizer.ggml.model`:
//!
//! - `gpt2`: byte-level BPE built as a [`tokenizers`] tokenizer, either
//!   from a GGUF file's vocabulary and merges (with the pre-tokenizer
//!   llama.cpp picks for `tokenizer.ggml.pre`: SmolLM2, Llama 3, Qwen2/3)
//!   or from the `tokenizer.json` an exporter wrote beside an ExecuTorch
//!   program ([`BpeTokenizer`]). Two tokenizers are kept: one that turns
//!   special texts like `<|im_start|>` into their tokens (chat templates)
//!   and one that treats them as plain text (user input), as llama.cpp's
//!   `parse_special` does.
//! - `llama`: SentencePiece pieces with scores and byte fallback (Llama 2,
//!   Gemma, Phi-3), joined by llama.cpp's own algorithm ([`SpmTokenizer`]).
//!
//! [`Tokenizer`] is either, picked from the file.

mod spm;

pub use spm::SpmTokenizer;

use std::collections::HashMap;
use std::sync::Mutex;

use arny_engine_api::{SpecialTokens, TokenId};
use arny_gguf::{GgufFile, Value};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

type HfTokenizer = tokenizers::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("the file has no `{0}`")]
    Missing(&'static str),
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    #[error("bad tokenizer data: {0}")]
    Invalid(String),
    #[error("tokenizer: {0}")]
    Tokenizers(String),
    #[error("cannot tokenize the text: {0}")]
    Encode(String),
}

impl TokenizerError {
    /// What an engine reports: tokenizer data that cannot be built is a
    /// corrupt model, a kind of tokenizer not built here is unsupported, and
    /// text that cannot be encoded is the caller's invalid input.
    pub fn into_engine_error(self, source_name: &str) -> arny_engine_api::EngineError {
        use arny_engine_api::EngineError;
        match self {
            Self::Unsupported(m) => EngineError::Unsupported(format!("{source_name}: {m}")),
            Self::Encode(_) => EngineError::InvalidInput(self.to_string()),
            Self::Missing(_) | Self::Invalid(_) | Self::Tokenizers(_) => EngineError::Corrupt {
                source_name: source_name.to_string(),
                reason: self.to_string(),
            },
        }
    }
}

pub type Result<T> = std::result::Result<T, TokenizerError>;

/// ggml token types (`tokenizer.ggml.token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

pub struct BpeTokenizer {
    /// One tokenizer for both ways of reading special texts, switched per
    /// call under the lock: a second copy of a 49k-token vocabulary would
    /// hold another 16 MiB.
    inner: Mutex<HfTokenizer>,
    merges: usize,
    /// Raw bytes of every token, for streaming decode.
    bytes: Vec<Vec<u8>>,
    special: Vec<bool>,
}

pub(crate) fn strings(file: &GgufFile, key: &'static str) -> Result<Vec<String>> {
    let arr = file
        .get(key)
        .and_then(Value::as_array)
        .ok_or(TokenizerError::Missing(key))?;
    arr.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| TokenizerError::Invalid(format!("{key} holds a non-string")))
        })
        .collect()
}

/// GPT-2's byte ↔ printable-character table: byte-level BPE vocabularies
/// spell byte `b` as `char(table[b])`.
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    table
}

fn byte_inverse() -> HashMap<char, u8> {
    byte_to_char()
        .iter()
        .enumerate()
        .map(|(b, c)| (*c, b as u8))
        .collect()
}

/// A byte-level token's bytes. A token outside the byte alphabet is kept
/// as its UTF-8.
fn byte_level_bytes(token: &str, inverse: &HashMap<char, u8>) -> Vec<u8> {
    token
        .chars()
        .map(|c| inverse.get(&c).copied())
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| token.as_bytes().to_vec())
}

/// The pre-tokenizer llama.cpp uses for a `tokenizer.ggml.pre` value.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level =
        |use_regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, use_regex));
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        Split::new(
            SplitPattern::Regex(re.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map(PreTokenizerWrapper::Split)
        .map_err(|e| TokenizerError::Tokenizers(e.to_string()))
    };
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        // Digits one by one, then GPT-2's pattern (llama.cpp groups these).
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level(true),
            ]))
        }
        "llama3" | "llama-v3" | "llama-bpe" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            split(
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            )?,
            byte_level(false),
        ])),
        // Llama 3's pattern with digits one at a time (Qwen2, Qwen2.5, Qwen3).
        "qwen2" | "deepseek-r1-qwen" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            split(
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            )?,
            byte_level(false),
        ])),
        other => {
            return Err(TokenizerError::Unsupported(format!(
                "pre-tokenizer `{other}`"
            )));
        }
    })
}

impl BpeTokenizer {
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let model = file
            .get_str("tokenizer.ggml.model")
            .ok_or(TokenizerError::Missing("tokenizer.ggml.model"))?;
        if model != "gpt2" {
            return Err(TokenizerError::Unsupported(format!(
                "tokenizer model `{model}` (only byte-level BPE, `gpt2`, is built here)"
            )));
        }
        let pre = file.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let tokens = strings(file, "tokenizer.ggml.tokens")?;
        let merges = strings(file, "tokenizer.ggml.merges")?;
        let types: Vec<i64> = match file
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
        {
            Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(TokenizerError::Invalid(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let mut vocab = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            if vocab.insert(t.clone(), i as u32).is_some() {
                return Err(TokenizerError::Invalid(format!(
                    "token `{t}` appears twice"
                )));
            }
        }
        let merges: Vec<(String, String)> = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| TokenizerError::Invalid(format!("merge `{m}` has no space")))
            })
            .collect::<Result<_>>()?;

        let n_merges = merges.len();
        let bpe = BPE::builder()
            .vocab_and_merges(
                vocab
                    .into_iter()
                    .collect::<tokenizers::models::bpe::Vocab>(),
                merges,
            )
            // llama.cpp takes a pre-token that is itself a token whole for
            // Llama 3's vocabulary, before any merge.
            .ignore_merges(matches!(pre, "llama3" | "llama-v3" | "llama-bpe"))
            .build()
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        let mut tk = HfTokenizer::new(bpe);
        tk.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, ty)| matches!(**ty, CONTROL | USER_DEFINED))
            .map(|(t, _)| AddedToken::from(t.clone(), true))
            .collect();
        tk.add_special_tokens(&added);

        let inverse = byte_inverse();
        let special: Vec<bool> = types
            .iter()
            .map(|t| matches!(*t, CONTROL | USER_DEFINED))
            .collect();
        let bytes = tokens
            .iter()
            .zip(&special)
            .map(|(t, &sp)| {
                if sp {
                    t.as_bytes().to_vec()
                } else {
                    byte_level_bytes(t, &inverse)
                }
            })
            .collect();
        Ok(Self {
            inner: Mutex::new(tk),
            merges: n_merges,
            bytes,
            special,
        })
    }

    /// The same tokenizer from a Hugging Face `tokenizer.json` (what
    /// transformers writes, e.g. beside an exported ExecuTorch program).
    /// Byte-level BPE only, as for GGUF files; added tokens marked special
    /// are parsed when `parse_special` asks for it.
    pub fn from_tokenizer_json(json: &[u8]) -> Result<Self> {
        let with_special =
            HfTokenizer::from_bytes(json).map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        // transformers writes byte-level decoders inside a `Sequence`; the
        // serialized form is the one stable place to look for it.
        let byte_level = with_special
            .get_decoder()
            .and_then(|d| serde_json::to_string(d).ok())
            .is_some_and(|d| d.contains("\"ByteLevel\""));
        if !byte_level {
            return Err(TokenizerError::Unsupported(
                "tokenizer.json without a byte-level decoder (only byte-level BPE is built here)"
                    .into(),
            ));
        }
        let n = with_special.get_vocab_size(true);
        let added = with_special.get_added_tokens_decoder();
        let inverse = byte_inverse();
        let mut bytes = Vec::with_capacity(n);
        let mut special = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let text = with_special.id_to_token(id).ok_or_else(|| {
                TokenizerError::Invalid(format!("token ids are not contiguous: {id} is missing"))
            })?;
            let sp = added.get(&id).is_some_and(|t| t.special);
            bytes.push(if sp {
                text.into_bytes()
            } else {
                byte_level_bytes(&text, &inverse)
            });
            special.push(sp);
        }
        // The merges' count, for `heap_bytes`; the tokenizer does not say.
        let merges = serde_json::from_slice::<serde_json::Value>(json)
            .ok()
            .and_then(|v| v["model"]["merges"].as_array().map(Vec::len))
            .unwrap_or(0);
        Ok(Self {
            inner: Mutex::new(with_special),
            merges,
            bytes,
            special,
        })
    }

    /// Token ids for `text`; `parse_special` turns special texts into
    /// their tokens. No BOS is added (SmolLM2 and most BPE models have none).
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let mut tk = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Special texts read as plain text when not parsed: llama.cpp's
        // `parse_special = false`.
        tk.set_encode_special_tokens(!parse_special);
        tk.encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// The bytes a token stands for (part of a UTF-8 character, possibly).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize).map(Vec::as_slice)
    }

    /// See [`Tokenizer::heap_bytes`]. Per token: its text in the model's
    /// two maps (text → id, id → text) and its bytes here, each with a
    /// `String`'s header and the map's slot; per merge, a map slot; and the
    /// BPE word cache, full (10,000 words).
    pub fn heap_bytes(&self) -> u64 {
        let text: usize = self.bytes.iter().map(Vec::len).sum();
        (3 * text + 130 * self.bytes.len() + 40 * self.merges + (1 << 20)) as u64
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }
}

/// The tokenizer a GGUF file names in `tokenizer.ggml.model`.
pub enum Tokenizer {
    Bpe(Box<BpeTokenizer>),
    Spm(SpmTokenizer),
}

/// What a vocabulary's kind implies when the file does not say: llama.cpp's
/// defaults for BOS and EOS ids and for adding BOS to a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialDefaults {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
}

/// llama.cpp's end-of-generation texts, for files that only name EOS.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "<|end_of_text|>",
];

impl Tokenizer {
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let model = file
            .get_str("tokenizer.ggml.model")
            .ok_or(TokenizerError::Missing("tokenizer.ggml.model"))?;
        match model {
            "gpt2" => BpeTokenizer::from_gguf(file).map(Self::from),
            "llama" => SpmTokenizer::from_gguf(file).map(Self::Spm),
            other => Err(TokenizerError::Unsupported(format!(
                "tokenizer model `{other}` (built here: `gpt2` byte-level BPE and `llama` SentencePiece)"
            ))),
        }
    }

    /// llama.cpp's defaults for this kind of vocabulary and pre-tokenizer,
    /// which the file's own `tokenizer.ggml.*` keys override.
    pub fn defaults(&self, file: &GgufFile) -> SpecialDefaults {
        match self {
            Self::Spm(_) => SpecialDefaults {
                bos: Some(1),
                eos: Some(2),
                add_bos: true,
            },
            Self::Bpe(_) => SpecialDefaults {
                bos: None,
                eos: None,
                add_bos: matches!(
                    file.get_str("tokenizer.ggml.pre"),
                    Some("llama3" | "llama-v3" | "llama-bpe")
                ),
            },
        }
    }

    /// BOS, EOS and every end-of-generation token: the ids the file names, plus
    /// the special tokens whose text llama.cpp treats as an end of turn.
    pub fn special_tokens(&self, file: &GgufFile, vocab: usize) -> SpecialTokens {
        let id = |k: &str| {
            file.get_u64(k)
                .map(|v| v as TokenId)
                .filter(|&v| (v as usize) < vocab)
        };
        let defaults = self.defaults(file);
        let in_vocab = |t: Option<TokenId>| t.filter(|&t| (t as usize) < vocab);
        let (bos, eos) = (
            id("tokenizer.ggml.bos_token_id").or(in_vocab(defaults.bos)),
            id("tokenizer.ggml.eos_token_id").or(in_vocab(defaults.eos)),
        );
        let mut eog: Vec<TokenId> = [
            eos,
            id("tokenizer.ggml.eot_token_id"),
            id("tokenizer.ggml.eom_token_id"),
        ]
        .into_iter()
        .flatten()
        .collect();
        for t in 0..vocab as TokenId {
            if self.is_special(t)
                && let Some(b) = self.token_bytes(t)
                && EOG_TEXTS.iter().any(|x| x.as_bytes() == b)
                && !eog.contains(&t)
            {
                eog.push(t);
            }
        }
        eog.sort_unstable();
        SpecialTokens {
            bos,
            eos,
            end_of_generation: eog,
            add_bos: file
                .get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.as_bool())
                .unwrap_or(defaults.add_bos),
        }
    }

    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        match self {
            Self::Bpe(t) => t.encode(text, parse_special),
            Self::Spm(t) => t.encode(text, parse_special),
        }
    }

    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        match self {
            Self::Bpe(t) => t.token_bytes(id),
            Self::Spm(t) => t.token_bytes(id),
        }
    }

    pub fn is_special(&self, id: u32) -> bool {
        match self {
            Self::Bpe(t) => t.is_special(id),
            Self::Spm(t) => t.is_special(id),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Bpe(t) => t.vocab_size(),
            Self::Spm(t) => t.vocab_size(),
        }
    }

    /// Heap bytes the tokenizer holds, for a model's resident bytes (an
    /// estimate from its tables, checked against a counting allocator by
    /// this crate's tests).
    pub fn heap_bytes(&self) -> u64 {
        match self {
            Self::Bpe(t) => t.heap_bytes(),
            Self::Spm(t) => t.heap_bytes(),
        }
    }
}

impl From<BpeTokenizer> for Tokenizer {
    fn from(t: BpeTokenizer) -> Self {
        Self::Bpe(Box::new(t))
    }
}
