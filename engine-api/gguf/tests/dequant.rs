//! Dequantization against values decoded by the `gguf` Python package
//! (llama.cpp's reference dequantizers): random blocks of every supported
//! type, and real tensors of the SmolLM2 model.

use std::path::Path;

use arny_gguf::GgufFile;
use arny_gguf::dequant::{self, dequantize};

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dequant")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn every_supported_type_matches_the_reference_dequantizer() {
    for (name, ty) in [
        ("F32", dequant::F32),
        ("F16", dequant::F16),
        ("BF16", dequant::BF16),
        ("Q8_0", dequant::Q8_0),
        ("Q4_0", dequant::Q4_0),
        ("Q4_1", dequant::Q4_1),
        ("Q4_K", dequant::Q4_K),
        ("Q6_K", dequant::Q6_K),
        ("Q5_0", dequant::Q5_0),
        ("Q5_1", dequant::Q5_1),
        ("Q5_K", dequant::Q5_K),
    ] {
        let raw = fixture(&format!("{name}.bin"));
        let want = floats(&fixture(&format!("{name}.f32")));
        let got = dequantize(ty, &raw, want.len()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // The reference computes in f32 too; only rounding order differs.
            let tol = 1e-6 * w.abs().max(1.0);
            assert!((g - w).abs() <= tol, "{name}[{i}]: {g} vs {w}");
        }
        // Non-trivial data: not all zeros, not all equal.
        assert!(
            want.iter().any(|v| *v != want[0]),
            "{name} fixture is degenerate"
        );
    }
}

#[test]
fn wrong_sizes_and_unknown_types_are_errors() {
    let raw = fixture("Q4_K.bin");
    assert!(dequantize(dequant::Q4_K, &raw[..raw.len() - 1], 256 * 6).is_err());
    assert!(dequantize(dequant::Q4_K, &raw, 256 * 5).is_err());
    assert!(dequantize(dequant::Q4_K, &raw, 100).is_err());
    assert!(dequantize(7, &raw, 256).is_err(), "Q5_1 is not decoded");
    assert!(dequantize(999, &raw, 256).is_err());
}

#[test]
fn real_smollm2_tensors_match() {
    let path = std::env::var("ARNY_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            let dir = std::env::var("ARNY_MODELS_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|_| {
                    Path::new(&std::env::var("HOME").unwrap()).join(".cache/arny/models")
                });
            dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", path.display()));
    let file = GgufFile::from_bytes(&bytes).unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_tensors.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let expected = expected.as_object().unwrap();
    assert_eq!(expected.len(), 5);
    for (name, want) in expected {
        let t = file.tensor(name).unwrap();
        assert_eq!(t.type_name(), want["type"].as_str(), "{name}");
        let v = file.dequantize(&bytes, t).unwrap();
        assert_eq!(v.len() as u64, want["elements"].as_u64().unwrap(), "{name}");
        for (i, w) in want["first"].as_array().unwrap().iter().enumerate() {
            assert_eq!(v[i], w.as_f64().unwrap() as f32, "{name}[{i}]");
        }
        for (p, w) in want["positions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(want["values"].as_array().unwrap())
        {
            let p = p.as_u64().unwrap() as usize;
            assert_eq!(v[p], w.as_f64().unwrap() as f32, "{name}[{p}]");
        }
        let sum: f64 = v.iter().map(|x| *x as f64).sum();
        let sum_sq: f64 = v.iter().map(|x| (*x as f64) * (*x as f64)).sum();
        let (ws, wq) = (
            want["sum"].as_f64().unwrap(),
            want["sum_sq"].as_f64().unwrap(),
        );
        assert!(
            (sum - ws).abs() <= 1e-6 * wq.max(1.0),
            "{name}: sum {sum} vs {ws}"
        );
        assert!(
            (sum_sq - wq).abs() <= 1e-9 * wq.max(1.0),
            "{name}: sum_sq {sum_sq} vs {wq}"
        );
    }
    // A file cut short: the tensor's bytes are checked again, no panic.
    let t = file.tensor("output_norm.weight").unwrap();
    assert!(file.tensor_data(&bytes[..t.start as usize + 4], t).is_err());
}
