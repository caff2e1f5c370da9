//! A SentencePiece vocabulary learnt from the same small text, in the form
//! Llama 2, Gemma and Phi-3 GGUF files have it (`tokenizer.ggml.model =
//! "llama"`): `<unk>`, `<s>`, `</s>`, the 256 byte tokens `<0xHH>` for text
//! no piece covers, then pieces with scores, spaces spelled `▁`.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::bpe::merge_commonest;

use arny_gguf::{GgufWriter, Value};

/// ggml's token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// The first tokens, with their types: SentencePiece's three, ChatML's
/// markers as control tokens (so SmolLM2's chat template applies), and one
/// user-defined token (which llama.cpp cuts out of any text, special
/// parsing or not).
pub const SPECIAL: [(&str, i32); 6] = [
    ("<unk>", UNKNOWN),
    ("<s>", CONTROL),
    ("</s>", CONTROL),
    ("<|im_start|>", CONTROL),
    ("<|im_end|>", CONTROL),
    ("<|tool|>", USER_DEFINED),
];

const SPACE: char = '\u{2581}';

#[derive(Debug, Clone, PartialEq)]
pub struct SpmVocabulary {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<i32>,
}

impl SpmVocabulary {
    /// `size` tokens: the specials, the bytes, every character of `text`,
    /// then pieces made by joining the commonest neighbours within words
    /// (a word is `▁` and a run of non-spaces). Later pieces score lower,
    /// as SentencePiece's BPE scores them; characters score below every
    /// piece. Deterministic: ties go to the pair that sorts first.
    pub fn train(text: &str, size: usize) -> Self {
        let mut tokens: Vec<String> = SPECIAL.iter().map(|(t, _)| t.to_string()).collect();
        let mut types: Vec<i32> = SPECIAL.iter().map(|&(_, k)| k).collect();
        let mut scores = vec![0.0; tokens.len()];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(BYTE);
            scores.push(0.0);
        }
        let mut counts: HashMap<Vec<String>, usize> = HashMap::new();
        let mut chars = BTreeSet::new();
        for w in text.split([' ', '\n']).filter(|w| !w.is_empty()) {
            let symbols: Vec<String> = std::iter::once(SPACE)
                .chain(w.chars())
                .map(String::from)
                .collect();
            chars.extend(symbols.iter().cloned());
            *counts.entry(symbols).or_default() += 1;
        }
        let mut known: HashSet<String> = tokens.iter().cloned().collect();
        for (i, c) in chars.into_iter().enumerate() {
            if known.insert(c.clone()) {
                tokens.push(c);
                types.push(NORMAL);
                scores.push(-1000.0 - i as f32);
            }
        }
        let mut words: Vec<(Vec<String>, usize)> = counts.into_iter().collect();
        words.sort();
        let mut rank = 0;
        while tokens.len() < size {
            let Some((a, b)) = merge_commonest(&mut words) else {
                break;
            };
            let joined = format!("{a}{b}");
            if known.insert(joined.clone()) {
                tokens.push(joined);
                types.push(NORMAL);
                scores.push(-(rank as f32));
                rank += 1;
            }
        }
        Self {
            tokens,
            scores,
            types,
        }
    }

    /// The `tokenizer.ggml.*` keys of a SentencePiece vocabulary.
    pub fn write_to(&self, w: &mut GgufWriter, add_space_prefix: bool) {
        let s = |v: &str| Value::String(v.to_string());
        w.set("tokenizer.ggml.model", s("llama"))
            .set(
                "tokenizer.ggml.tokens",
                Value::Array(self.tokens.iter().map(|t| s(t)).collect()),
            )
            .set(
                "tokenizer.ggml.scores",
                Value::Array(self.scores.iter().map(|&v| Value::F32(v)).collect()),
            )
            .set(
                "tokenizer.ggml.token_type",
                Value::Array(self.types.iter().map(|&t| Value::I32(t)).collect()),
            )
            .set("tokenizer.ggml.bos_token_id", Value::U32(1))
            .set("tokenizer.ggml.eos_token_id", Value::U32(2))
            .set("tokenizer.ggml.unknown_token_id", Value::U32(0))
            .set("tokenizer.ggml.add_bos_token", Value::Bool(true))
            .set("tokenizer.ggml.add_eos_token", Value::Bool(false))
            .set(
                "tokenizer.ggml.add_space_prefix",
                Value::Bool(add_space_prefix),
            );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_unique_and_scored() {
        let v = SpmVocabulary::train("the cat the hat\nthe mat", 300);
        assert_eq!(v.tokens.len(), v.scores.len());
        assert_eq!(v.tokens.len(), v.types.len());
        let unique: HashSet<_> = v.tokens.iter().collect();
        assert_eq!(unique.len(), v.tokens.len());
        assert_eq!(v.tokens[SPECIAL.len()], "<0x00>");
        assert!(v.tokens.contains(&"▁the".to_string()), "{:?}", v.tokens);
        // Characters (7 here, `▁` among them) score below every piece, and
        // pieces score lower the later they were learnt.
        let first = SPECIAL.len() + 256 + 7;
        assert!(v.scores[first - 1] < -1000.0 && v.scores[first] == 0.0);
        assert!(v.scores[first..].windows(2).all(|p| p[0] > p[1]));
    }
}
