//! Damaged and foreign inputs give typed errors, never a crash, beyond the
//! TCK's cases (a zip, an empty file, cuts at 100 bytes, 4 KiB and half).
//! On the tiny model's export: a program has the same parts (header,
//! flatbuffer, segments) whatever the size of its weights.

use std::path::PathBuf;

use arny_engine_api::{EngineError, InferenceEngine, LoadOptions, ModelSource};
use arny_pte_export::{PteQuant, cached_export};

fn tiny_program() -> PathBuf {
    cached_export(
        &arny_conformance::tiny_gguf(),
        PteQuant::Fp32,
        256,
        &mut |_| {},
    )
    .unwrap_or_else(|e| panic!("exporting the tiny model: {e}"))
}

fn load(bytes: Vec<u8>, name: &str) -> EngineError {
    let engine = arny_engine_pte::PteEngine::new();
    futures::executor::block_on(engine.load(
        ModelSource::Bytes {
            name: name.into(),
            bytes: bytes.into(),
        },
        LoadOptions::default(),
    ))
    .err()
    .unwrap_or_else(|| panic!("{name}: loaded"))
}

#[test]
fn a_gguf_is_the_wrong_format() {
    let bytes = std::fs::read(arny_conformance::tiny_gguf()).expect("read");
    let err = load(bytes, "model.gguf");
    assert!(matches!(err, EngineError::WrongFormat { .. }), "{err}");
}

#[test]
fn cuts_anywhere_are_corrupt() {
    let path = tiny_program();
    let bytes = std::fs::read(path).expect("read");
    let n = bytes.len();
    // Inside the header, inside the flatbuffer, inside the segments, and one
    // byte short of the end.
    for cut in [12, 30, 64 * 1024, n / 3, n - 4096, n - 1] {
        let err = load(bytes[..cut].to_vec(), &format!("cut-{cut}"));
        assert!(
            matches!(err, EngineError::Corrupt { .. }),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn a_damaged_program_header_is_corrupt() {
    let path = tiny_program();
    let mut bytes = std::fs::read(path).expect("read");
    // The flatbuffer's root offset now points past the end of the program:
    // the runtime's verifier must reject it before anything reads there.
    bytes[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = load(bytes, "bad-root");
    assert!(matches!(err, EngineError::Corrupt { .. }), "{err}");
}

#[test]
fn a_gpu_request_is_unsupported() {
    let path = tiny_program();
    let engine = arny_engine_pte::PteEngine::new();
    let err = futures::executor::block_on(engine.load(
        ModelSource::Path(path),
        LoadOptions {
            device: arny_engine_api::DeviceRequest::Gpu,
            ..LoadOptions::default()
        },
    ))
    .err()
    .expect("gpu");
    assert!(matches!(err, EngineError::Unsupported(_)), "{err}");
}
