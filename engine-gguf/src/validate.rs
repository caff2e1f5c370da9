//! Checks a file before llama.cpp sees it.
//!
//! llama.cpp validates the container itself, but some values it trusts end
//! in a `GGML_ASSERT`, which aborts the whole process (a `block_count` of
//! 1000 does). So the header is parsed first by Arny's bounds-checked
//! reader, and the hyperparameters llama.cpp asserts on are checked here;
//! the common mistakes (a directory, a foreign file) also get precise
//! errors this way.

use std::io::BufReader;
use std::path::Path;

use arny_engine_api::{EngineError, Result, check_model_file};
use arny_gguf::lora::LoraFile;
use arny_gguf::{GgufFile, ReadOptions};

/// The merges and scores are checked but not kept (llama.cpp reads them);
/// the vocabulary is kept for the uniqueness check below.
const OPTIONS: ReadOptions = ReadOptions {
    max_array_len: 1024,
    keep: &[TOKENS],
};
const TOKENS: &str = "tokenizer.ggml.tokens";

/// llama.cpp's LLAMA_MAX_LAYERS.
const MAX_LAYERS: u64 = 512;

/// Parses and checks the GGUF file at `path`; returns its size and its
/// tensor directory (see [`GgufFile::into_directory`]).
pub fn check_gguf_file(path: &Path) -> Result<(u64, GgufFile)> {
    let (len, gguf) = read_header(path, OPTIONS)?;
    let name = path.display().to_string();
    if gguf.get_str("general.type") == Some("adapter") {
        return Err(adapter_as_model(&name));
    }
    check_hparams(&gguf, &name)?;
    Ok((len, gguf.into_directory()))
}

/// Same checks for an in-memory model.
pub fn check_gguf_bytes(bytes: &[u8], name: &str) -> Result<GgufFile> {
    let gguf = GgufFile::read_with(bytes, bytes.len() as u64, OPTIONS)
        .map_err(|e| e.into_engine_error(name))?;
    if gguf.get_str("general.type") == Some("adapter") {
        return Err(adapter_as_model(name));
    }
    check_hparams(&gguf, name)?;
    Ok(gguf.into_directory())
}

/// Checks an adapter (a file's header, or bytes) against the model's
/// header: a LoRA adapter, its tensors within the file, every pair fitting
/// a tensor of the model.
pub fn check_lora(gguf: &GgufFile, base: &GgufFile, name: &str) -> Result<LoraFile> {
    let lora = LoraFile::parse(gguf, name)?;
    lora.check_against(base, name)?;
    Ok(lora)
}

/// Parses the header of the file at `path`, with its size.
pub fn read_header(path: &Path, options: ReadOptions) -> Result<(u64, GgufFile)> {
    let len = check_model_file(path)?;
    let name = path.display().to_string();
    let file = std::fs::File::open(path)
        .map_err(|e| EngineError::io(format!("open {}", path.display()), e))?;
    let gguf = GgufFile::read_with(BufReader::with_capacity(1 << 16, file), len, options)
        .map_err(|e| e.into_engine_error(&name))?;
    Ok((len, gguf))
}

fn adapter_as_model(name: &str) -> EngineError {
    EngineError::WrongFormat {
        source_name: name.to_string(),
        expected: "GGUF model",
        reason: "it is a LoRA adapter (general.type = adapter); load it with --adapter over its base model".into(),
    }
}

/// The hyperparameters llama.cpp would otherwise assert on.
fn check_hparams(f: &GgufFile, name: &str) -> Result<()> {
    let bad = |reason: String| EngineError::Corrupt {
        source_name: name.to_string(),
        reason,
    };
    let arch = f
        .architecture()
        .ok_or_else(|| bad("no general.architecture".into()))?;
    // A scalar key must be an integer in `range`; absent is llama.cpp's call,
    // and per-layer arrays are left to it too.
    let int = |key: &str, range: std::ops::RangeInclusive<u64>| -> Result<Option<u64>> {
        let key = format!("{arch}.{key}");
        match f.get(&key) {
            None | Some(arny_gguf::Value::Array(_)) => Ok(None),
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
    // Norm epsilons feed a GGML_ASSERT(eps >= 0); no real model has a
    // non-finite float hyperparameter.
    let prefix = format!("{arch}.");
    for (key, v) in f.metadata.range(prefix.clone()..) {
        if !key.starts_with(&prefix) {
            break;
        }
        if let arny_gguf::Value::F32(_) | arny_gguf::Value::F64(_) = v {
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
        // llama.cpp asserts that no two tokens share a text.
        let mut seen = std::collections::HashSet::with_capacity(n as usize);
        for t in tokens.as_array().unwrap_or_default() {
            let text = t
                .as_str()
                .ok_or_else(|| bad(format!("{TOKENS} holds a non-string")))?;
            if !seen.insert(text) {
                return Err(bad(format!(
                    "token {text:?} appears twice in the vocabulary"
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
