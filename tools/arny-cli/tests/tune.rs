//! `arny tune` end to end, small enough for CI: a few steps of LoRA on
//! generated arithmetic, then the adapter it wrote on the llama.cpp engine,
//! checked against PEFT's own teacher-forced choices.
//!
//! Needs the tune layer (`scripts/setup.sh --with tune`; test.sh installs
//! it). The shipped math adapter's accuracy is measured with `arny eval`
//! (README), not here: that takes minutes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arny_engine_api::{Adapter, LoadOptions, ModelSource, SessionOptions, teacher_forced_logits};
use arny_engine_gguf::{GgufEngine, GgufModel};
use futures::executor::block_on;
use serde_json::Value;

const ARNY: &str = env!("CARGO_BIN_EXE_arny");

fn generate_data(dir: &Path, n: usize) -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tune/gen_math.py");
    let out = Command::new("python3")
        .args([script, "--n", &n.to_string(), "--seed", "5"])
        .output()
        .expect("run gen_math.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("math.jsonl");
    std::fs::write(&path, out.stdout).unwrap();
    path
}

/// Top-1 agreement of the engine's teacher-forced logits with PEFT's, over
/// every position of the reference examples.
fn agreement(model: &GgufModel, adapter: Option<Arc<dyn Adapter>>, refs: &Value, key: &str) -> f64 {
    let (mut same, mut total) = (0usize, 0usize);
    for ex in refs["examples"].as_array().unwrap() {
        let tokens: Vec<u32> = ex["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        let want: Vec<usize> = ex[key]["top1"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as usize)
            .collect();
        let mut s = model
            .session(&SessionOptions {
                adapter: adapter.clone(),
                ..Default::default()
            })
            .unwrap();
        let logits = block_on(teacher_forced_logits(&mut s, &tokens)).unwrap();
        for (pos, want) in want.iter().enumerate() {
            let row = logits.row(pos);
            let top = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap();
            same += usize::from(top == *want);
            total += 1;
        }
    }
    same as f64 / total as f64
}

#[test]
fn tune_writes_an_adapter_the_engine_runs_as_peft_does() {
    assert!(
        arny_tune::ready(),
        "the tune layer is missing: run scripts/setup.sh --deps-only --with tune"
    );
    let dir = tempfile::tempdir().unwrap();
    let data = generate_data(dir.path(), 48);
    let out = dir.path().join("tuned");
    let run = Command::new(ARNY)
        .args(["tune", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args([
            "--steps",
            "8",
            "--batch",
            "4",
            "--rank",
            "8",
            "--alpha",
            "16",
            "--lr",
            "2e-3",
            "--holdout",
            "0.25",
            "--max-len",
            "128",
            "--eval-n",
            "2",
        ])
        .output()
        .expect("run arny tune");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "arny tune failed:\n{stderr}");
    let adapter_path = PathBuf::from(String::from_utf8_lossy(&run.stdout).trim());
    assert_eq!(adapter_path, out.join("adapter.gguf"));

    // The loss falls, on the training batches and on held-out examples.
    let sidecar: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("arny-tune.json")).unwrap())
            .unwrap();
    let curve: Vec<f64> = sidecar["loss_curve"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(curve.len(), 8);
    let first = curve[..3].iter().sum::<f64>() / 3.0;
    let last = curve[5..].iter().sum::<f64>() / 3.0;
    assert!(last < first, "training loss did not fall: {curve:?}");
    let before = sidecar["held_out_loss"]["before"].as_f64().unwrap();
    let after = sidecar["held_out_loss"]["after"].as_f64().unwrap();
    assert!(after < before, "held-out loss {before} -> {after}");
    assert_eq!(sidecar["gguf_tensors"], 30 * 7 * 2);
    assert_eq!(
        sidecar["base"]["sha256"],
        arny_model_store::DEFAULT_MODEL.sha256,
        "trained on the default model"
    );
    assert!(out.join("peft/adapter_config.json").is_file());

    // llama.cpp runs it as PEFT does: its teacher-forced next-token choices
    // agree with PEFT's (the q/k rows permuted right), as closely as the
    // base model's agree without the adapter.
    let base = arny_model_store::require_default_model().unwrap();
    let model = GgufEngine::new()
        .load_path(&base, &LoadOptions::default())
        .unwrap();
    let adapter: Arc<dyn Adapter> = model
        .adapter(ModelSource::Path(adapter_path), 1.0)
        .expect("the engine loads the tuned adapter");
    assert_eq!(adapter.info().rank, 8);
    assert_eq!(adapter.info().alpha, Some(16.0));
    let refs: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("reference.json")).unwrap())
            .unwrap();
    let tuned = agreement(&model, Some(adapter.clone()), &refs, "tuned");
    let plain = agreement(&model, None, &refs, "base");
    eprintln!("top-1 agreement with PEFT: with the adapter {tuned:.3}, without {plain:.3}");
    assert!(plain >= 0.9, "the base model disagrees with torch: {plain}");
    assert!(
        tuned >= plain - 0.05,
        "with the adapter {tuned}, without {plain}"
    );
}
