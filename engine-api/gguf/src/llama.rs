//! What llama.cpp would assert on, checked first.
//!
//! llama.cpp validates the container itself, but some values it trusts end
//! in a `GGML_ASSERT`, which aborts the whole process (a `block_count` of
//! 1000 does; so do two tokens with one text). The engine parses a header
//! with [`READ_OPTIONS`] and calls [`check_model`] before llama.cpp opens
//! the file; the fuzz targets drive the same two functions.

use arny_engine_api::EngineError;

use crate::{GgufFile, ReadOptions, Value};

/// The merges and scores are checked but not kept (llama.cpp reads them);
/// the vocabulary is kept for the uniqueness check.
pub const READ_OPTIONS: ReadOptions = ReadOptions {
    max_array_len: 1024,
    keep: &[TOKENS],
};
const TOKENS: &str = "tokenizer.ggml.tokens";

/// llama.cpp's LLAMA_MAX_LAYERS.
const MAX_LAYERS: u64 = 512;

/// Checks a parsed model header: not an adapter, and no hyperparameter or
/// vocabulary entry that llama.cpp would assert on.
pub fn check_model(f: &GgufFile, name: &str) -> Result<(), EngineError> {
    if f.get_str("general.type") == Some("adapter") {
        return Err(EngineError::WrongFormat {
            source_name: name.to_string(),
            expected: "GGUF model",
            reason: "it is a LoRA adapter (general.type = adapter); load it with --adapter over its base model".into(),
        });
    }
    check_hparams(f, name)
}

/// The hyperparameters llama.cpp would otherwise assert on.
fn check_hparams(f: &GgufFile, name: &str) -> Result<(), EngineError> {
    let bad = |reason: String| EngineError::Corrupt {
        source_name: name.to_string(),
        reason,
    };
    let arch = f
        .architecture()
        .ok_or_else(|| bad("no general.architecture".into()))?;
    // A scalar key must be an integer in `range`; absent is llama.cpp's call,
    // and per-layer arrays are left to it too.
    let int =
        |key: &str, range: std::ops::RangeInclusive<u64>| -> Result<Option<u64>, EngineError> {
            let key = format!("{arch}.{key}");
            match f.get(&key) {
                None | Some(Value::Array(_)) => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(n) if range.contains(&n) => Ok(Some(n)),
                    _ => Err(bad(format!("{key} = {v:?} is out of range"))),
                },
            }
        };
    int("block_count", 1..=MAX_LAYERS)?;
    int("context_length", 1..=(1 << 24))?;
    let embd = int("embedding_length", 1..=(1 << 20))?;
    int("feed_forward_length", 1..=(1 << 24))?;
    let heads = int("attention.head_count", 1..=(1 << 16))?;
    let kv_heads = int("attention.head_count_kv", 1..=(1 << 16))?;
    if let (Some(e), Some(h)) = (embd, heads)
        && e % h != 0
    {
        return Err(bad(format!(
            "embedding length {e} is not a multiple of {h} heads"
        )));
    }
    if let (Some(h), Some(kv)) = (heads, kv_heads)
        && (kv > h || h % kv != 0)
    {
        return Err(bad(format!(
            "{h} attention heads cannot share {kv} KV heads"
        )));
    }
    // llama.cpp asserts that the scaling type is one it names.
    let scaling = format!("{arch}.rope.scaling.type");
    if let Some(v) = f.get(&scaling) {
        match v.as_str() {
            Some("none" | "linear" | "yarn" | "longrope") => {}
            _ => return Err(bad(format!("{scaling} = {v:?} is not a RoPE scaling type"))),
        }
    }
    // Norm epsilons feed a GGML_ASSERT(eps >= 0); no real model has a
    // non-finite float hyperparameter.
    let prefix = format!("{arch}.");
    for (key, v) in f.metadata.range(prefix.clone()..) {
        if !key.starts_with(&prefix) {
            break;
        }
        if let Value::F32(_) | Value::F64(_) = v {
            let x = v.as_f64().unwrap_or(f64::NAN);
            if !x.is_finite() || (key.ends_with("epsilon") && x < 0.0) {
                return Err(bad(format!("{key} = {v:?} is out of range")));
            }
        }
    }
    if let Some(tokens) = f.get(TOKENS) {
        let n = tokens
            .array_len()
            .ok_or_else(|| bad(format!("{TOKENS} is not an array")))?;
        if n == 0 {
            return Err(bad("empty vocabulary".into()));
        }
        // llama.cpp asserts that no two tokens share a text, as it reads
        // them: a C string (up to the first NUL), an empty one renamed
        // `[EMPTY_<id>]`.
        let mut seen = std::collections::HashSet::with_capacity(n as usize);
        for (id, t) in tokens.as_array().unwrap_or_default().iter().enumerate() {
            let text = t
                .as_str()
                .ok_or_else(|| bad(format!("{TOKENS} holds a non-string")))?;
            let text = text.split('\0').next().unwrap_or_default();
            let text = if text.is_empty() {
                std::borrow::Cow::Owned(format!("[EMPTY_{id}]"))
            } else {
                std::borrow::Cow::Borrowed(text)
            };
            if !seen.insert(text.clone()) {
                return Err(bad(format!(
                    "token {text:?} appears twice in the vocabulary (as llama.cpp reads it)"
                )));
            }
        }
        for key in [
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.padding_token_id",
            "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.seperator_token_id",
        ] {
            if let Some(v) = f.get(key)
                && v.as_i64().is_some_and(|id| id >= n as i64)
            {
                return Err(bad(format!(
                    "{key} = {v:?} is outside the {n}-token vocabulary"
                )));
            }
        }
        if let Some(t) = f.tensor("token_embd.weight")
            && t.dims.get(1).is_some_and(|&rows| rows != n)
        {
            return Err(bad(format!(
                "token_embd.weight has {:?} rows for a {n}-token vocabulary",
                t.dims.get(1)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_gguf_bytes(bytes: &[u8], name: &str) -> Result<(), EngineError> {
        let f = GgufFile::read_with(bytes, bytes.len() as u64, READ_OPTIONS)
            .map_err(|e| e.into_engine_error(name))?;
        check_model(&f, name)
    }

    fn vocab(tokens: &[&str]) -> Vec<u8> {
        let mut w = crate::GgufWriter::new();
        w.set("general.architecture", crate::Value::String("llama".into()));
        w.set(
            TOKENS,
            crate::Value::Array(
                tokens
                    .iter()
                    .map(|t| crate::Value::String(t.to_string()))
                    .collect(),
            ),
        );
        w.to_bytes()
    }

    #[test]
    fn tokens_equal_as_c_strings_are_duplicates() {
        assert!(check_gguf_bytes(&vocab(&["a", "ab", "b"]), "m").is_ok());
        // llama.cpp reads "a\0x" as "a": two tokens with one text, which
        // it asserts on (found by the mutation campaign).
        let err = check_gguf_bytes(&vocab(&["a", "a\0x", "b"]), "m").unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
        // An empty token becomes `[EMPTY_<id>]`, which may collide too.
        assert!(check_gguf_bytes(&vocab(&["", "b"]), "m").is_ok());
        assert!(check_gguf_bytes(&vocab(&["", "[EMPTY_0]"]), "m").is_err());
    }

    #[test]
    fn unknown_rope_scaling_is_refused() {
        let with = |t: &str| {
            let mut w = crate::GgufWriter::new();
            w.set("general.architecture", crate::Value::String("llama".into()));
            w.set("llama.rope.scaling.type", crate::Value::String(t.into()));
            check_gguf_bytes(&w.to_bytes(), "m")
        };
        assert!(with("linear").is_ok());
        assert!(with("yarn").is_ok());
        let err = with("dynamic").unwrap_err();
        assert!(err.to_string().contains("RoPE scaling"), "{err}");
    }

    #[test]
    fn foreign_and_short_inputs() {
        assert!(matches!(
            check_gguf_bytes(b"PK\x03\x04 zip", "m"),
            Err(EngineError::WrongFormat { .. })
        ));
        assert!(matches!(
            check_gguf_bytes(b"GGUF\x03\0", "m"),
            Err(EngineError::Corrupt { .. })
        ));
        assert!(matches!(
            check_gguf_bytes(b"GGUF\x09\0\0\0", "m"),
            Err(EngineError::WrongFormat { .. })
        ));
        assert!(matches!(
            check_gguf_bytes(b"", "m"),
            Err(EngineError::Corrupt { .. } | EngineError::WrongFormat { .. })
        ));
    }
}
