//! LoRA adapters Arny ships.
//!
//! Each one was made with `arny tune` from data this repository generates
//! (the command is in the README), is checked in under `adapters/` with its
//! SHA-256, and is compiled into native builds: a known adapter needs no
//! network, and the file the cache holds is checked against the same hash
//! before it is used.

use std::path::PathBuf;

use crate::{StoreError, io, models_dir};

/// An adapter Arny can provide without a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownAdapter {
    /// Short id used in manifests (`adapter = { known = "…" }`).
    pub id: &'static str,
    /// The known model it was trained on.
    pub base: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub bytes: u64,
    pub description: &'static str,
}

/// The math specialist: arithmetic, percentages, unit conversions and short
/// word problems answered in one line that ends with the result.
pub const MATH_SMOLLM2_135M: KnownAdapter = KnownAdapter {
    id: "math-smollm2-135m",
    base: crate::SMOLLM2_135M_Q4_1.id,
    file_name: "math-smollm2-135m.lora.gguf",
    sha256: MATH_SHA256,
    bytes: MATH_BYTES,
    description: "math specialist for SmolLM2-135M-Instruct (LoRA r16, f16)",
};

const MATH_SHA256: &str = "0063bde9fb75aa14ab40f54ec54fad869a50e2469f534f5a8b99c03ca616e994";
const MATH_BYTES: u64 = 9797888;

/// Every adapter the store knows.
pub const KNOWN_ADAPTERS: &[KnownAdapter] = &[MATH_SMOLLM2_135M];

/// Looks a known adapter up by id or file name.
pub fn known_adapter(id: &str) -> Option<&'static KnownAdapter> {
    KNOWN_ADAPTERS
        .iter()
        .find(|a| a.id == id || a.file_name == id)
}

/// Where `adapter` lives in the cache, whether or not it is there.
pub fn adapter_path(adapter: &KnownAdapter) -> PathBuf {
    models_dir().join("adapters").join(adapter.file_name)
}

#[cfg(not(target_arch = "wasm32"))]
fn embedded(adapter: &KnownAdapter) -> Option<&'static [u8]> {
    match adapter.id {
        "math-smollm2-135m" => Some(include_bytes!("../adapters/math-smollm2-135m.lora.gguf")),
        _ => None,
    }
}

#[cfg(target_arch = "wasm32")]
fn embedded(_: &KnownAdapter) -> Option<&'static [u8]> {
    None
}

/// What `arny tune` recorded of PEFT's model in torch (float32) for a
/// shipped adapter: held-out token sequences with the tuned and the base
/// model's top-1 choice at every position. Engines are checked against it.
pub fn adapter_reference(adapter: &KnownAdapter) -> Option<&'static str> {
    match adapter.id {
        "math-smollm2-135m" => Some(include_str!("../adapters/math-smollm2-135m.reference.json")),
        _ => None,
    }
}

/// The adapter's bytes as compiled into this build (none in wasm, where
/// the page fetches them).
pub fn adapter_bytes(adapter: &KnownAdapter) -> Option<&'static [u8]> {
    embedded(adapter)
}

/// The cached file of `adapter`, written from the copy compiled into this
/// build when it is missing or differs from the known hash.
pub fn locate_adapter(adapter: &KnownAdapter) -> Result<PathBuf, StoreError> {
    let path = adapter_path(adapter);
    let current = std::fs::read(&path).ok().is_some_and(|b| {
        b.len() as u64 == adapter.bytes && crate::sha256_hex(&b) == adapter.sha256
    });
    if current {
        return Ok(path);
    }
    let bytes = embedded(adapter).ok_or_else(|| StoreError::Missing {
        id: adapter.id.to_string(),
        dir: models_dir().join("adapters"),
    })?;
    let actual = crate::sha256_hex(bytes);
    if actual != adapter.sha256 {
        return Err(StoreError::Checksum {
            path: PathBuf::from(adapter.file_name),
            expected: adapter.sha256.to_string(),
            actual,
        });
    }
    let dir = path.parent().unwrap_or(&path).to_path_buf();
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    // Written under another name and renamed: a reader never sees half.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes).map_err(io(format!("writing {}", partial.display())))?;
    std::fs::rename(&partial, &path).map_err(io(format!("writing {}", path.display())))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_adapter_is_compiled_in_with_its_hash() {
        for a in KNOWN_ADAPTERS {
            let bytes = embedded(a).expect("compiled in");
            assert_eq!(bytes.len() as u64, a.bytes, "{}", a.id);
            assert_eq!(crate::sha256_hex(bytes), a.sha256, "{}", a.id);
            assert!(
                crate::known(a.base).is_some(),
                "{}: unknown base {}",
                a.id,
                a.base
            );
        }
    }
}
