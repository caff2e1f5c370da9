//! # arny-pte-export
//!
//! ExecuTorch exports of cached models: where they live, whether one is
//! current, and how to make one (`export_pte.py`, beside this crate, in a
//! pinned venv).
//!
//! An export is a folder `pte/<model>-<quant>-<key>/` in the models folder,
//! holding `model.pte`, the tokenizer files and the `arny-export.json`
//! sidecar. `key` hashes everything the program's bytes depend on: the
//! source model's SHA-256, the quantization, the maximum length, the
//! exporter script and its pinned requirements. Changing any of them names
//! a different folder, so a stale export is never picked up; it is simply
//! not found, and made again.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use arny_model_store::{DEFAULT_MODEL, KnownModel, hex, models_dir};

/// The exporter, compiled in so that the binary and the cache key agree.
pub const EXPORTER: &str = include_str!("../export_pte.py");
/// The export venv's pinned requirements.
pub const REQUIREMENTS: &str = include_str!("../requirements.txt");
/// The program's context (tokens) when none is asked for: the SDK's
/// default context, as on the other engines. Attention runs over the
/// tokens present (custom SDPA over the custom KV cache), so a longer
/// static cache costs memory it is planned for, not speed: measured on the
/// default model's fp32 program, 4096 against 512 prefilled and decoded at
/// the same speed, peak RSS +18 MiB, export 567 s against about 420.
pub const DEFAULT_MAX_LEN: u32 = 4096;
/// Env var naming the export venv.
pub const VENV_ENV: &str = "ARNY_PTE_VENV";
/// File in the venv recording which requirements it was built from.
const VENV_MARKER: &str = "arny-requirements.sha256";

/// What can go wrong making or finding an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "no {quant} ExecuTorch export of the default model in {dir}; run `arny export pte --quant {quant}` (about 5 min)"
    )]
    Missing { quant: PteQuant, dir: PathBuf },
    #[error(
        "the ExecuTorch export venv is not ready in {}; run `scripts/setup.sh --with pte-export` or `arny export pte`",
        .0.display()
    )]
    VenvMissing(PathBuf),
    #[error("{what} failed ({status}):\n{detail}")]
    Failed {
        what: String,
        status: String,
        detail: String,
    },
    /// The adapter to merge is not one for this model (typed as the
    /// engines type it: `wrong_format`, `corrupt`, `incompatible`).
    #[error("the adapter: {0}")]
    Adapter(#[from] arny_engine_api::EngineError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        context: context.to_string(),
        source,
    }
}

/// How the exported program stores its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum PteQuant {
    /// float32 weights and activations: the reference.
    Fp32,
    /// int4 weights in groups, int8 dynamic activations (linear layers),
    /// int8 embeddings.
    #[cfg_attr(feature = "clap", value(name = "8da4w"))]
    A8W4,
    /// int8 weights, int8 dynamic activations, int8 embeddings.
    #[cfg_attr(feature = "clap", value(name = "8da8w"))]
    A8W8,
}

impl PteQuant {
    pub const ALL: [PteQuant; 3] = [Self::Fp32, Self::A8W4, Self::A8W8];

    /// The exporter's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::A8W4 => "8da4w",
            Self::A8W8 => "8da8w",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|q| q.name() == name)
    }
}

impl std::fmt::Display for PteQuant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A LoRA adapter merged into the weights at export: ExecuTorch programs
/// carry their weights, so on the pte engine a specialist is a program.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedAdapter {
    /// A GGUF LoRA file (as `arny tune` writes and llama.cpp loads).
    pub path: PathBuf,
    pub sha256: String,
    /// Multiplies the adapter's effect (1.0: as trained).
    pub scale: f32,
}

impl MergedAdapter {
    /// Checks the adapter at `path` against the model at `base` as the
    /// engines do (a LoRA file, for this architecture, every pair matching
    /// a weight of the model), before any Python starts, and hashes it.
    pub fn new(path: &Path, base: &Path, scale: f32) -> Result<Self, ExportError> {
        arny_engine_api::check_adapter_scale(scale)?;
        let name = path.display().to_string();
        arny_engine_api::check_model_file(path)?;
        let bytes = std::fs::read(path).map_err(io("reading the adapter"))?;
        let lora = arny_gguf::GgufFile::from_bytes(&bytes)
            .map_err(|e| e.into_engine_error(&name))
            .and_then(|f| arny_gguf::lora::LoraFile::parse(&f, &name))?;
        let base_bytes = std::fs::read(base).map_err(io("reading the model to export"))?;
        let header = arny_gguf::GgufFile::from_bytes(&base_bytes)
            .map_err(|e| e.into_engine_error(&base.display().to_string()))?;
        lora.check_against(&header, &name)?;
        Ok(Self {
            path: path.to_path_buf(),
            sha256: hex(&Sha256::digest(&bytes)),
            scale,
        })
    }
}

/// The cache key of an export of the file with `source_sha256` (with
/// `adapter` merged into it).
pub fn export_key(
    source_sha256: &str,
    quant: PteQuant,
    max_len: u32,
    adapter: Option<&MergedAdapter>,
) -> String {
    let mut h = Sha256::new();
    // Only a merged export hashes the adapter: plain exports keep the key
    // they had before adapters existed, and stay cached.
    let merged = adapter.map(|a| format!("{}*{}", a.sha256, a.scale));
    let max_len = max_len.to_string();
    let parts = [
        source_sha256.as_bytes(),
        quant.name().as_bytes(),
        max_len.as_bytes(),
        EXPORTER.as_bytes(),
        REQUIREMENTS.as_bytes(),
    ];
    for part in parts
        .into_iter()
        .chain(merged.as_deref().map(str::as_bytes))
    {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    hex(&h.finalize())[..12].to_string()
}

/// The export folder of a known model, whether or not it exists.
pub fn export_dir(model: &KnownModel, quant: PteQuant, max_len: u32) -> PathBuf {
    export_dir_for(model.file_name, model.sha256, quant, max_len, None)
}

/// The export folder of any GGUF file named `file_name` with content
/// `source_sha256`, whether or not it exists.
pub fn export_dir_for(
    file_name: &str,
    source_sha256: &str,
    quant: PteQuant,
    max_len: u32,
    adapter: Option<&MergedAdapter>,
) -> PathBuf {
    let stem = file_name.split('.').next().unwrap_or(file_name);
    let merged = if adapter.is_some() { "-lora" } else { "" };
    models_dir().join("pte").join(format!(
        "{stem}{merged}-{}-{}",
        quant.name(),
        export_key(source_sha256, quant, max_len, adapter)
    ))
}

/// The program in `dir`, if the export there is complete.
fn complete(dir: &Path) -> Option<PathBuf> {
    // The sidecar is written last: without it the export did not finish.
    let done = dir.join("model.pte").is_file() && dir.join("arny-export.json").is_file();
    done.then(|| dir.join("model.pte"))
}

/// The program of a known model's export, if it is complete.
pub fn locate_export(model: &KnownModel, quant: PteQuant, max_len: u32) -> Option<PathBuf> {
    complete(&export_dir(model, quant, max_len))
}

/// The default model's export with `quant` at the default length, or an
/// error naming the command that makes it.
pub fn require_default_export(quant: PteQuant) -> Result<PathBuf, ExportError> {
    locate_export(&DEFAULT_MODEL, quant, DEFAULT_MAX_LEN).ok_or_else(|| ExportError::Missing {
        quant,
        dir: export_dir(&DEFAULT_MODEL, quant, DEFAULT_MAX_LEN),
    })
}

/// The export of any GGUF file from the cache (keyed by its content), made
/// first when the cache lacks it. The venv must exist already
/// ([`ensure_venv`]): this never installs 6 GB behind a caller's back.
/// `stage` receives the exporter's progress lines.
pub fn cached_export(
    source: &Path,
    quant: PteQuant,
    max_len: u32,
    stage: &mut dyn FnMut(&str),
) -> Result<PathBuf, ExportError> {
    cached_merged_export(source, quant, max_len, None, stage)
}

/// [`cached_export`] with `adapter` merged into the weights.
pub fn cached_merged_export(
    source: &Path,
    quant: PteQuant,
    max_len: u32,
    adapter: Option<&MergedAdapter>,
    stage: &mut dyn FnMut(&str),
) -> Result<PathBuf, ExportError> {
    let bytes = std::fs::read(source).map_err(io("reading the model to export"))?;
    let name = source.file_name().unwrap_or_default().to_string_lossy();
    let dir = export_dir_for(
        &name,
        &hex(&Sha256::digest(&bytes)),
        quant,
        max_len,
        adapter,
    );
    if let Some(program) = complete(&dir) {
        return Ok(program);
    }
    // Two processes that miss the same export (test binaries run side by
    // side) would write the same files at once; the second waits here and
    // then finds the first one's export complete.
    let parent = dir.parent().unwrap_or(&dir);
    std::fs::create_dir_all(parent).map_err(io("creating the exports folder"))?;
    let lock = std::fs::File::create(dir.with_extension("lock"))
        .map_err(io("creating the export's lock file"))?;
    lock.lock().map_err(io("locking the export"))?;
    if let Some(program) = complete(&dir) {
        return Ok(program);
    }
    let venv = venv_dir();
    if !venv_ready(&venv) {
        return Err(ExportError::VenvMissing(venv));
    }
    export(&venv, source, &dir, quant, max_len, adapter, stage)
}

/// The export venv's folder: `$ARNY_PTE_VENV`, else `pte-venv` beside the
/// models folder's parent cache (`~/.cache/arny/pte-venv`).
pub fn venv_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(VENV_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let models = models_dir();
    models
        .parent()
        .map_or_else(|| models.join("pte-venv"), |p| p.join("pte-venv"))
}

fn requirements_sha() -> String {
    hex(&Sha256::digest(REQUIREMENTS.as_bytes()))
}

/// Whether the venv exists and was built from the current requirements.
pub fn venv_ready(venv: &Path) -> bool {
    venv.join("bin/python").is_file()
        && std::fs::read_to_string(venv.join(VENV_MARKER))
            .is_ok_and(|s| s.trim() == requirements_sha())
}

/// Which of a child's streams carries its progress lines.
#[derive(Clone, Copy)]
pub enum Lines {
    Stdout,
    Stderr,
}

/// Runs `cmd`, handing each line of the `lines` stream to `on_line` as it
/// arrives; on failure the error carries the last lines of both streams,
/// on success the result is the other stream's last lines. The Python
/// tools (the exporter, `arny tune`) run through this.
pub fn run_logged(
    cmd: &mut Command,
    what: &str,
    lines: Lines,
    on_line: &mut dyn FnMut(&str),
) -> Result<Vec<String>, ExportError> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ExportError::Io {
            context: format!("starting {what}"),
            source: e,
        })?;
    let (watched, other): (Box<dyn std::io::Read + Send>, Box<dyn std::io::Read + Send>) =
        match lines {
            Lines::Stdout => (
                Box::new(child.stdout.take().expect("piped")),
                Box::new(child.stderr.take().expect("piped")),
            ),
            Lines::Stderr => (
                Box::new(child.stderr.take().expect("piped")),
                Box::new(child.stdout.take().expect("piped")),
            ),
        };
    // The other stream is drained on a thread so that neither pipe can
    // fill up and stall the child.
    let drain = std::thread::spawn(move || {
        tail_of(BufReader::new(other).lines().map_while(Result::ok), |_| {})
    });
    let tail = tail_of(
        BufReader::new(watched).lines().map_while(Result::ok),
        on_line,
    );
    let status = child.wait().map_err(|e| ExportError::Io {
        context: format!("waiting for {what}"),
        source: e,
    })?;
    let other_tail = drain.join().unwrap_or_default();
    if !status.success() {
        return Err(ExportError::Failed {
            what: what.to_string(),
            status: status.to_string(),
            detail: [other_tail, tail].concat().join("\n"),
        });
    }
    Ok(other_tail)
}

/// The last 30 lines, each also handed to `each`.
fn tail_of(lines: impl Iterator<Item = String>, mut each: impl FnMut(&str)) -> Vec<String> {
    let mut tail = std::collections::VecDeque::new();
    for line in lines {
        each(&line);
        tail.push_back(line);
        if tail.len() > 30 {
            tail.pop_front();
        }
    }
    tail.into()
}

/// Creates (or rebuilds) the export venv from the pinned requirements.
/// About 6 GB: PyPI's torch brings the CUDA libraries along.
pub fn ensure_venv(venv: &Path, log: &mut dyn FnMut(&str)) -> Result<(), ExportError> {
    if venv_ready(venv) {
        return Ok(());
    }
    let python = std::env::var("ARNY_PYTHON").unwrap_or_else(|_| "python3".into());
    log(&format!("creating the export venv in {}", venv.display()));
    run_logged(
        Command::new(&python).arg("-m").arg("venv").arg(venv),
        "python3 -m venv",
        Lines::Stdout,
        log,
    )?;
    let req = tempfile::Builder::new()
        .suffix(".txt")
        .tempfile()
        .map_err(io("writing the requirements"))?;
    std::fs::write(req.path(), REQUIREMENTS).map_err(io("writing the requirements"))?;
    log("installing executorch, torch, optimum-executorch (about 6 GB, several minutes)");
    run_logged(
        Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--disable-pip-version-check",
                "--progress-bar",
                "off",
                "-r",
            ])
            .arg(req.path()),
        "pip install",
        Lines::Stdout,
        log,
    )?;
    std::fs::write(venv.join(VENV_MARKER), requirements_sha() + "\n")
        .map_err(io("marking the venv"))?;
    Ok(())
}

/// Exports `source` (a GGUF file) into `out` with the venv's Python, with
/// `adapter` merged into the weights when given. `stage` receives the
/// exporter's progress lines ("2/5 tracing ...").
pub fn export(
    venv: &Path,
    source: &Path,
    out: &Path,
    quant: PteQuant,
    max_len: u32,
    adapter: Option<&MergedAdapter>,
    stage: &mut dyn FnMut(&str),
) -> Result<PathBuf, ExportError> {
    let mut script = tempfile::Builder::new()
        .prefix("arny-export-pte-")
        .suffix(".py")
        .tempfile()
        .map_err(io("writing the exporter"))?;
    script
        .write_all(EXPORTER.as_bytes())
        .map_err(io("writing the exporter"))?;
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.arg(script.path())
        .arg("--from")
        .arg(source)
        .arg("--out")
        .arg(out)
        .arg("--quant")
        .arg(quant.name())
        .arg("--max-len")
        .arg(max_len.to_string());
    if let Some(a) = adapter {
        cmd.arg("--adapter")
            .arg(&a.path)
            .arg("--adapter-scale")
            .arg(a.scale.to_string());
    }
    run_logged(&mut cmd, "the PTE exporter", Lines::Stderr, &mut |line| {
        if let Some(s) = line.strip_prefix("ARNY-STAGE ") {
            stage(s);
        }
    })?;
    Ok(out.join("model.pte"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_changes_with_every_input() {
        let sha = DEFAULT_MODEL.sha256;
        let key = |sha: &str, q, len, a: Option<&MergedAdapter>| export_key(sha, q, len, a);
        let base = key(sha, PteQuant::Fp32, 512, None);
        assert_eq!(base, key(sha, PteQuant::Fp32, 512, None));
        assert_ne!(base, key(sha, PteQuant::A8W4, 512, None));
        assert_ne!(base, key(sha, PteQuant::Fp32, 256, None));
        assert_ne!(base, key(&"0".repeat(64), PteQuant::Fp32, 512, None));
        let lora = MergedAdapter {
            path: "a.gguf".into(),
            sha256: "1".repeat(64),
            scale: 1.0,
        };
        let merged = key(sha, PteQuant::Fp32, 512, Some(&lora));
        assert_ne!(base, merged);
        let half = MergedAdapter {
            scale: 0.5,
            ..lora.clone()
        };
        assert_ne!(merged, key(sha, PteQuant::Fp32, 512, Some(&half)));
        let other = MergedAdapter {
            sha256: "2".repeat(64),
            ..lora
        };
        assert_ne!(merged, key(sha, PteQuant::Fp32, 512, Some(&other)));
    }

    #[test]
    fn quant_names_round_trip() {
        for q in PteQuant::ALL {
            assert_eq!(PteQuant::from_name(q.name()), Some(q));
        }
        assert_eq!(PteQuant::from_name("int3"), None);
    }
}
