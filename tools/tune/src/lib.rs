//! # arny-tune
//!
//! LoRA fine-tuning for `arny tune`: `tune.py` (PEFT, beside this crate)
//! run in the PTE export venv's Python with a small pinned layer of newer
//! packages first on `PYTHONPATH` (see `requirements.txt`), so the 6 GB of
//! torch is installed once and the export venv is never changed.
//!
//! The layer lives in `tune-layer/` beside the export venv (or
//! `$ARNY_TUNE_DIR`), with a marker hashing both requirement files: when
//! either changes, the layer is made again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use arny_pte_export::{ExportError, Lines, run_logged};

/// The tuner, compiled in so the binary and the script always agree.
pub const TUNER: &str = include_str!("../tune.py");
/// The layer's pinned requirements.
pub const REQUIREMENTS: &str = include_str!("../requirements.txt");
/// Env var naming the layer folder.
pub const LAYER_ENV: &str = "ARNY_TUNE_DIR";
const LAYER_MARKER: &str = "arny-requirements.sha256";

/// What can go wrong preparing or running a tune.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// The venv, the layer or the tuner failed; the message says which.
    #[error(transparent)]
    Run(#[from] ExportError),
    #[error("the tuner finished without a summary line; its last output:\n{0}")]
    NoSummary(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> TuneError + '_ {
    move |source| TuneError::Io {
        context: context.to_string(),
        source,
    }
}

/// The layer's folder: `$ARNY_TUNE_DIR`, else `tune-layer` beside the
/// export venv.
pub fn layer_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(LAYER_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let venv = arny_pte_export::venv_dir();
    venv.parent()
        .map_or_else(|| venv.join("tune-layer"), |p| p.join("tune-layer"))
}

/// What the layer was built from: both requirement files. scripts/setup.sh
/// computes the same value (`sha256` of the two files' hex digests, one per
/// line), so either can build the layer and the other accepts it.
fn layer_key() -> String {
    let lines = format!(
        "{}\n{}\n",
        arny_model_store::sha256_hex(REQUIREMENTS.as_bytes()),
        arny_model_store::sha256_hex(arny_pte_export::REQUIREMENTS.as_bytes())
    );
    arny_model_store::sha256_hex(lines.as_bytes())
}

/// Whether the export venv and the layer over it are ready.
pub fn ready() -> bool {
    arny_pte_export::venv_ready(&arny_pte_export::venv_dir()) && layer_ready(&layer_dir())
}

fn layer_ready(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(LAYER_MARKER)).is_ok_and(|s| s.trim() == layer_key())
}

/// Creates what is missing: the export venv (about 6 GB), then the layer
/// (about 150 MB). `log` receives pip's lines.
pub fn ensure(log: &mut dyn FnMut(&str)) -> Result<(), TuneError> {
    let venv = arny_pte_export::venv_dir();
    arny_pte_export::ensure_venv(&venv, log)?;
    let dir = layer_dir();
    if layer_ready(&dir) {
        return Ok(());
    }
    log(&format!(
        "installing peft and transformers into {}",
        dir.display()
    ));
    // Installed beside the final folder and renamed, so that an interrupted
    // install never looks complete.
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let mut req = tempfile::Builder::new()
        .suffix(".txt")
        .tempfile()
        .map_err(io("writing the requirements"))?;
    req.write_all(REQUIREMENTS.as_bytes())
        .map_err(io("writing the requirements"))?;
    run_logged(
        Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--disable-pip-version-check",
                "--progress-bar",
                "off",
                "--no-deps",
                "--target",
            ])
            .arg(&partial)
            .arg("-r")
            .arg(req.path()),
        "pip install (the tune layer)",
        Lines::Stdout,
        log,
    )?;
    std::fs::write(partial.join(LAYER_MARKER), layer_key() + "\n")
        .map_err(io("marking the tune layer"))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&partial, &dir).map_err(io("moving the tune layer in place"))?;
    Ok(())
}

/// A tuning run's settings; see `tune.py` for what each one does.
#[derive(Debug, Clone)]
pub struct TuneOptions {
    /// The base model (a GGUF file).
    pub base: PathBuf,
    /// The examples (JSONL).
    pub data: PathBuf,
    /// Where the adapter, the PEFT folder and the sidecar go.
    pub out: PathBuf,
    pub rank: u32,
    pub alpha: f32,
    pub steps: u32,
    pub batch: u32,
    pub lr: f64,
    pub seed: u64,
    pub holdout: f64,
    pub max_len: u32,
    pub eval_n: u32,
    /// 0: torch's default (every core).
    pub threads: u32,
}

impl TuneOptions {
    /// The defaults `arny tune` documents: rank 16 on every linear layer.
    pub fn new(base: PathBuf, data: PathBuf, out: PathBuf) -> Self {
        Self {
            base,
            data,
            out,
            rank: 16,
            alpha: 32.0,
            steps: 300,
            batch: 8,
            lr: 1e-3,
            seed: 0,
            holdout: 0.1,
            max_len: 256,
            eval_n: 64,
            threads: 0,
        }
    }
}

/// What the tuner reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum TuneEvent {
    /// "2/5 training: ..."
    Stage(String),
    /// One optimizer step done.
    Step {
        step: u32,
        steps: u32,
        loss: f64,
        eta_s: f64,
    },
}

/// The tuner's closing summary.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct TuneSummary {
    pub held_out_loss_before: Option<f64>,
    pub held_out_loss_after: Option<f64>,
    /// Task accuracy on the held-out examples (see `tune.py`).
    pub accuracy: Option<f64>,
    /// The GGUF LoRA.
    pub adapter: PathBuf,
}

/// Runs `tune.py` with `options`; the venv and layer must be ready
/// ([`ensure`]).
pub fn tune(
    options: &TuneOptions,
    on_event: &mut dyn FnMut(TuneEvent),
) -> Result<TuneSummary, TuneError> {
    let venv = arny_pte_export::venv_dir();
    let mut script = tempfile::Builder::new()
        .prefix("arny-tune-")
        .suffix(".py")
        .tempfile()
        .map_err(io("writing the tuner"))?;
    script
        .write_all(TUNER.as_bytes())
        .map_err(io("writing the tuner"))?;
    let o = options;
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.env("PYTHONPATH", layer_dir())
        .arg(script.path())
        .arg("--from")
        .arg(&o.base)
        .arg("--data")
        .arg(&o.data)
        .arg("--out")
        .arg(&o.out);
    for (flag, value) in [
        ("--rank", o.rank.to_string()),
        ("--alpha", o.alpha.to_string()),
        ("--steps", o.steps.to_string()),
        ("--batch", o.batch.to_string()),
        ("--lr", o.lr.to_string()),
        ("--seed", o.seed.to_string()),
        ("--holdout", o.holdout.to_string()),
        ("--max-len", o.max_len.to_string()),
        ("--eval-n", o.eval_n.to_string()),
        ("--threads", o.threads.to_string()),
    ] {
        cmd.arg(flag).arg(value);
    }
    let stdout = run_logged(&mut cmd, "the tuner", Lines::Stderr, &mut |line| {
        if let Some(s) = line.strip_prefix("ARNY-STAGE ") {
            on_event(TuneEvent::Stage(s.to_string()));
        } else if let Some(json) = line.strip_prefix("ARNY-PROGRESS ")
            && let Some(step) = parse_step(json)
        {
            on_event(step);
        }
    })?;
    stdout
        .iter()
        .rev()
        .find_map(|l| serde_json::from_str::<TuneSummary>(l).ok())
        .ok_or_else(|| TuneError::NoSummary(stdout.join("\n")))
}

fn parse_step(json: &str) -> Option<TuneEvent> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(TuneEvent::Step {
        step: u32::try_from(v.get("step")?.as_u64()?).ok()?,
        steps: u32::try_from(v.get("steps")?.as_u64()?).ok()?,
        loss: v.get("loss")?.as_f64()?,
        eta_s: v.get("eta_s")?.as_f64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_parse() {
        assert_eq!(
            parse_step(r#"{"step": 3, "steps": 10, "loss": 1.25, "eta_s": 4.5}"#),
            Some(TuneEvent::Step {
                step: 3,
                steps: 10,
                loss: 1.25,
                eta_s: 4.5
            })
        );
        assert_eq!(parse_step(r#"{"step": 3}"#), None);
        assert_eq!(parse_step("not json"), None);
    }
}
