//! A byte-level BPE vocabulary learnt from a small text, in the form GPT-2
//! and SmolLM2 use: every byte is a token (spelled with GPT-2's printable
//! stand-ins, `Ġ` for a space), and merges join frequent neighbours within
//! a word.

use std::collections::HashMap;

use arny_gguf::{GgufWriter, Value};

/// SmolLM2's first three tokens, with the same ids.
pub const SPECIAL: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// ggml's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;

/// Tokens (specials, the 256 bytes, then one per merge) and merges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocabulary {
    pub tokens: Vec<String>,
    pub merges: Vec<(String, String)>,
}

/// GPT-2's byte → character map: printable bytes stand for themselves, the
/// others for code points from 256 on.
fn byte_chars() -> [char; 256] {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        out[b as usize] = if printable(b) {
            char::from_u32(b).unwrap_or('?')
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap_or('?')
        };
    }
    out
}

/// Words as a GPT-2-style pre-tokenizer cuts them: an optional leading
/// space and a run of letters, or one digit (SmolLM2 splits digits), or an
/// optional space and a run of punctuation, or whitespace.
fn words(text: &str) -> Vec<&str> {
    #[derive(PartialEq, Clone, Copy)]
    enum Class {
        Letter,
        Digit,
        Space,
        Other,
    }
    let class = |c: u8| {
        if c.is_ascii_alphabetic() || c >= 0x80 {
            Class::Letter
        } else if c.is_ascii_digit() {
            Class::Digit
        } else if c.is_ascii_whitespace() {
            Class::Space
        } else {
            Class::Other
        }
    };
    // A space leads a following word of letters or punctuation.
    let leads = |b: &[u8], i: usize| {
        b[i] == b' '
            && b.get(i + 1)
                .is_some_and(|&c| matches!(class(c), Class::Letter | Class::Other))
    };
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let k = if leads(b, i) {
            i += 1;
            class(b[i])
        } else {
            class(b[i])
        };
        let mut end = i + 1;
        if k != Class::Digit {
            while end < b.len() && class(b[end]) == k {
                end += 1;
            }
        }
        if k == Class::Space && end - start > 1 && end < b.len() && leads(b, end - 1) {
            end -= 1;
        }
        out.push(&text[start..end]);
        i = end;
    }
    out
}

/// Joins the commonest pair of neighbouring symbols (counted over the
/// words, each `n` times) wherever it occurs, and returns it; `None` when
/// no word has two symbols left. Ties go to the pair that sorts first.
pub(crate) fn merge_commonest(words: &mut [(Vec<String>, usize)]) -> Option<(String, String)> {
    let mut pairs: HashMap<(&str, &str), usize> = HashMap::new();
    for (w, n) in words.iter() {
        for p in w.windows(2) {
            *pairs.entry((&p[0], &p[1])).or_default() += n;
        }
    }
    let (a, b) = pairs
        .into_iter()
        .max_by(|(a, x), (b, y)| x.cmp(y).then_with(|| b.cmp(a)))
        .map(|((a, b), _)| (a.to_string(), b.to_string()))?;
    let joined = format!("{a}{b}");
    for (w, _) in words.iter_mut() {
        let mut i = 0;
        while i + 1 < w.len() {
            if w[i] == a && w[i + 1] == b {
                w[i] = joined.clone();
                w.remove(i + 1);
            }
            i += 1;
        }
    }
    Some((a, b))
}

impl Vocabulary {
    /// Learns `merges` merges from `text` (fewer if the text runs out of
    /// pairs). Deterministic: ties go to the pair that sorts first.
    pub fn train(text: &str, merges: usize) -> Self {
        let chars = byte_chars();
        let mut counts: HashMap<Vec<String>, usize> = HashMap::new();
        for w in words(text) {
            let symbols = w.bytes().map(|b| chars[b as usize].to_string()).collect();
            *counts.entry(symbols).or_default() += 1;
        }
        let mut words: Vec<(Vec<String>, usize)> = counts.into_iter().collect();
        words.sort();
        let mut tokens: Vec<String> = SPECIAL.iter().map(|s| s.to_string()).collect();
        tokens.extend(chars.iter().map(|c| c.to_string()));
        let mut known: std::collections::HashSet<String> = tokens.iter().cloned().collect();
        let mut learnt = Vec::new();
        for _ in 0..merges {
            let Some((a, b)) = merge_commonest(&mut words) else {
                break;
            };
            let joined = format!("{a}{b}");
            if known.insert(joined.clone()) {
                tokens.push(joined);
            }
            learnt.push((a, b));
        }
        Self {
            tokens,
            merges: learnt,
        }
    }

    /// The `tokenizer.ggml.*` keys of a GPT-2-style vocabulary, as SmolLM2's
    /// GGUF file has them, with llama.cpp's pre-tokenizer `pre`.
    pub fn write_to(&self, w: &mut GgufWriter, pre: &str) {
        let s = |v: &str| Value::String(v.to_string());
        let types = (0..self.tokens.len())
            .map(|i| Value::I32(if i < SPECIAL.len() { CONTROL } else { NORMAL }))
            .collect();
        w.set("tokenizer.ggml.model", s("gpt2"))
            .set("tokenizer.ggml.pre", s(pre))
            .set(
                "tokenizer.ggml.tokens",
                Value::Array(self.tokens.iter().map(|t| s(t)).collect()),
            )
            .set("tokenizer.ggml.token_type", Value::Array(types))
            .set(
                "tokenizer.ggml.merges",
                Value::Array(
                    self.merges
                        .iter()
                        .map(|(a, b)| Value::String(format!("{a} {b}")))
                        .collect(),
                ),
            )
            .set("tokenizer.ggml.bos_token_id", Value::U32(1))
            .set("tokenizer.ggml.eos_token_id", Value::U32(2))
            .set("tokenizer.ggml.unknown_token_id", Value::U32(0))
            .set("tokenizer.ggml.padding_token_id", Value::U32(2))
            .set("tokenizer.ggml.add_bos_token", Value::Bool(false))
            .set("tokenizer.ggml.add_space_prefix", Value::Bool(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_cut_like_gpt2() {
        assert_eq!(
            words("What is 22+2? Hi  there."),
            vec![
                "What", " is", " ", "2", "2", "+", "2", "?", " Hi", " ", " there", "."
            ]
        );
    }

    #[test]
    fn merges_build_unique_tokens() {
        let v = Vocabulary::train("the cat the hat the mat", 20);
        assert_eq!(v.tokens.len(), 3 + 256 + v.merges.len());
        let unique: std::collections::HashSet<_> = v.tokens.iter().collect();
        assert_eq!(unique.len(), v.tokens.len());
        // The commonest pairs ("a t", "t h", "h e": three each) come first,
        // ties in sorted order.
        assert_eq!(v.merges[0], ("a".into(), "t".into()));
        assert_eq!(v.merges[1], ("h".into(), "e".into()));
    }
}
