//! `arny export pte`: a GGUF model to an ExecuTorch program, offline.
//!
//! The work is done by `tools/pte-export/export_pte.py` (compiled into this
//! binary) in a pinned venv (`scripts/setup.sh` creates it; this command
//! creates it too when it is missing). Exports of the default model go to
//! the model cache under a key that covers everything the program depends
//! on (see `arny_pte_export`), which is where `--engine pte` looks.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use arny_engine_api::EngineKind;
use arny_model_store as store;
use arny_pte_export::{self as pte, PteQuant};

use crate::pte::export_with_progress;

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
    #[arg(long, value_enum, default_value_t = PteQuant::Fp32)]
    quant: PteQuant,
    /// The program's context in tokens (its static KV cache).
    #[arg(long, default_value_t = pte::DEFAULT_MAX_LEN)]
    max_len: u32,
    /// A LoRA adapter (GGUF, e.g. from `arny tune`) to merge into the
    /// weights: ExecuTorch programs carry their weights, so on the pte
    /// engine a tuned specialist is a program of its own.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// How strongly the merged adapter applies (1.0: as trained).
    #[arg(long, default_value_t = 1.0, requires = "adapter")]
    adapter_scale: f32,
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
    let quant = args.quant;
    if args.max_len < 16 {
        bail!("invalid input: --max-len must be at least 16");
    }
    let source = match &args.from {
        Some(from) => from.clone(),
        None => crate::paths::model_path_for(EngineKind::Gguf, None)?,
    };
    let adapter = args
        .adapter
        .as_deref()
        .map(|a| pte::MergedAdapter::new(a, &source, args.adapter_scale))
        .transpose()?;
    let out = match (&args.from, &args.out) {
        (_, Some(out)) => out.clone(),
        (Some(_), None) => bail!("invalid input: --from needs --out"),
        (None, None) => {
            let m = &store::DEFAULT_MODEL;
            pte::export_dir_for(m.file_name, m.sha256, quant, args.max_len, adapter.as_ref())
        }
    };
    let program = out.join("model.pte");
    let sidecar = out.join("arny-export.json");
    let cached = args.from.is_none() && args.out.is_none();
    if cached && !args.force && program.is_file() && sidecar.is_file() {
        eprintln!("already exported: {}", program.display());
    } else {
        export_with_progress(&source, &out, quant, args.max_len, adapter.as_ref())?;
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
