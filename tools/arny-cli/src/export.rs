//! `arny export pte`: a GGUF model to an ExecuTorch program, offline.
//!
//! The work is done by `tools/pte-export/export_pte.py` (compiled into this
//! binary) in a pinned venv (`scripts/setup.sh` creates it; this command
//! creates it too when it is missing). Exports of the default model go to
//! the model cache under a key that covers everything the program depends
//! on (see `arny_model_store::pte`), which is where `--engine pte` looks.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arny_model_store::{self as store, pte};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Export a GGUF model to an ExecuTorch `.pte` program (XNNPACK), with
    /// its tokenizer files and an `arny-export.json` sidecar.
    Pte(PteArgs),
}

#[derive(clap::Args, Debug)]
pub struct PteArgs {
    /// The GGUF model. Default: the default model (fetched if missing),
    /// exported into the model cache.
    #[arg(long = "from")]
    from: Option<PathBuf>,
    /// Output folder. Required with --from; default: the model cache.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Weights: fp32 (reference), 8da4w (int4 weights, int8 dynamic
    /// activations; ~6x smaller) or 8da8w.
    #[arg(long, default_value = "fp32")]
    quant: String,
    /// The program's context in tokens (its static KV cache).
    #[arg(long, default_value_t = pte::DEFAULT_MAX_LEN)]
    max_len: u32,
    /// Export again even if the cache has this export.
    #[arg(long)]
    force: bool,
    /// Print the sidecar as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Pte(args) => run_pte(args),
    }
}

fn run_pte(args: PteArgs) -> Result<()> {
    let quant = pte::PteQuant::from_name(&args.quant).ok_or_else(|| {
        anyhow::anyhow!(
            "invalid input: unknown quantization `{}`; use fp32, 8da4w or 8da8w",
            args.quant
        )
    })?;
    if args.max_len < 16 {
        bail!("invalid input: --max-len must be at least 16");
    }
    let (source, out) = match (&args.from, &args.out) {
        (Some(from), Some(out)) => (from.clone(), out.clone()),
        (Some(_), None) => bail!("invalid input: --from needs --out"),
        (None, out) => {
            let source = crate::runtime::model_path_for(arny_engine_gguf::ENGINE_ID, None)?;
            let out = out
                .clone()
                .unwrap_or_else(|| pte::export_dir(&store::DEFAULT_MODEL, quant, args.max_len));
            (source, out)
        }
    };
    let program = out.join("model.pte");
    let sidecar = out.join("arny-export.json");
    let cached = args.from.is_none() && args.out.is_none();
    if cached && !args.force && program.is_file() && sidecar.is_file() {
        eprintln!("already exported: {}", program.display());
    } else {
        export_with_progress(&source, &out, quant, args.max_len)?;
    }
    if args.json {
        let text = std::fs::read_to_string(&sidecar)
            .with_context(|| format!("reading {}", sidecar.display()))?;
        print!("{text}");
    } else {
        println!("{}", program.display());
    }
    Ok(())
}

/// The default model's export with `quant`, made now if the cache lacks it.
pub fn default_export(quant: pte::PteQuant) -> Result<PathBuf> {
    match pte::require_default_export(quant) {
        Ok(p) => Ok(p),
        Err(store::StoreError::ExportMissing { dir, .. }) => {
            eprintln!(
                "No {} ExecuTorch export of the default model in the cache yet; exporting it (about 5 min, once).",
                quant.name()
            );
            let source = crate::runtime::model_path_for(arny_engine_gguf::ENGINE_ID, None)?;
            export_with_progress(&source, &dir, quant, pte::DEFAULT_MAX_LEN)?;
            Ok(dir.join("model.pte"))
        }
        Err(e) => Err(e.into()),
    }
}

fn spinner() -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Runs the exporter with a spinner showing its current stage.
pub fn export_with_progress(
    source: &Path,
    out: &Path,
    quant: pte::PteQuant,
    max_len: u32,
) -> Result<PathBuf> {
    if !source.is_file() {
        bail!("not found: {}", source.display());
    }
    let venv = pte::venv_dir();
    if !pte::venv_ready(&venv) {
        let bar = spinner();
        bar.set_message("preparing the export venv");
        let result = pte::ensure_venv(&venv, &mut |line| {
            bar.set_message(line.chars().take(100).collect::<String>())
        });
        bar.finish_and_clear();
        result?;
    }
    let bar = spinner();
    bar.set_message(format!(
        "exporting {} ({}): starting Python",
        source.file_name().unwrap_or_default().to_string_lossy(),
        quant.name()
    ));
    let started = Instant::now();
    let result = pte::export(&venv, source, out, quant, max_len, &mut |stage| {
        bar.set_message(stage.to_string());
    });
    bar.finish_and_clear();
    let program = result?;
    eprintln!(
        "exported {} in {:.0} s",
        program.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(program)
}
