//! `arny tune`: a LoRA adapter from a JSONL of examples, on this machine's
//! CPU, with PEFT (`tools/tune/tune.py`, compiled into this binary).
//!
//! The first run installs the export venv (torch; about 6 GB, shared with
//! `arny export pte`) and a small pinned layer with peft over it. Progress
//! is a bar over the optimizer steps with the loss and the time left.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use arny_engine_api::EngineKind;
use arny_tune::{TuneEvent, TuneOptions};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::pte::spinner;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Examples, one JSON object per line: {"messages": [...]} (the loss is
    /// on the assistant turns) or {"prompt": ..., "completion": ...}; an
    /// optional "answer" is what held-out accuracy checks.
    #[arg(long)]
    data: PathBuf,
    /// Output folder: adapter.gguf (the GGUF LoRA), peft/ (the PEFT
    /// adapter), arny-tune.json (the sidecar).
    #[arg(long)]
    out: PathBuf,
    /// The base model (a GGUF file). Default: the default model.
    #[arg(long = "from")]
    from: Option<PathBuf>,
    /// LoRA rank, on all seven linear layers of every block.
    #[arg(long, default_value_t = 16)]
    rank: u32,
    /// LoRA alpha (the delta is scaled by alpha / rank).
    #[arg(long, default_value_t = 32.0)]
    alpha: f32,
    /// Optimizer steps.
    #[arg(long, default_value_t = 300)]
    steps: u32,
    /// Examples per step.
    #[arg(long, default_value_t = 8)]
    batch: u32,
    /// Peak learning rate (AdamW, warmup then cosine decay).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed for the split, the batches and the LoRA initialization.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Share of the examples held out for the loss and accuracy report.
    #[arg(long, default_value_t = 0.1)]
    holdout: f64,
    /// Examples longer than this many tokens are cut.
    #[arg(long, default_value_t = 256)]
    max_len: u32,
    /// Held-out examples answered greedily to measure accuracy.
    #[arg(long, default_value_t = 64)]
    eval_n: u32,
    /// CPU threads (default: every core).
    #[arg(long, default_value_t = 0)]
    threads: u32,
}

pub fn run(args: Args) -> Result<()> {
    if !args.data.is_file() {
        bail!("not found: --data {}", args.data.display());
    }
    let base = crate::paths::model_path_for(EngineKind::Gguf, args.from.as_deref())?;
    if !base.is_file() {
        bail!("not found: --from {}", base.display());
    }
    if !arny_tune::ready() {
        let bar = spinner();
        bar.set_message("preparing the tune venv (first run: torch, about 6 GB)");
        let result = arny_tune::ensure(&mut |line| {
            bar.set_message(line.chars().take(100).collect::<String>())
        });
        bar.finish_and_clear();
        result?;
    }
    let options = TuneOptions {
        rank: args.rank,
        alpha: args.alpha,
        steps: args.steps,
        batch: args.batch,
        lr: args.lr,
        seed: args.seed,
        holdout: args.holdout,
        max_len: args.max_len,
        eval_n: args.eval_n,
        threads: args.threads,
        ..TuneOptions::new(base, args.data.clone(), args.out.clone())
    };
    let started = Instant::now();
    let multi = MultiProgress::new();
    let stage_bar = multi.add(spinner());
    stage_bar.set_message("starting Python");
    let mut steps: Option<ProgressBar> = None;
    let result = arny_tune::tune(&options, &mut |event| match event {
        TuneEvent::Stage(s) => {
            if let Some(bar) = steps.take() {
                bar.finish();
            }
            stage_bar.set_message(s);
        }
        TuneEvent::Step {
            step,
            steps: total,
            loss,
            eta_s,
        } => {
            let bar = steps.get_or_insert_with(|| {
                multi.add(
                    ProgressBar::new(u64::from(total)).with_style(
                        ProgressStyle::with_template(
                            "  [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    ),
                )
            });
            bar.set_position(u64::from(step));
            bar.set_message(format!("loss {loss:.3}  eta {}", eta(eta_s)));
        }
    });
    stage_bar.finish_and_clear();
    let summary = result?;
    let pct = |x: Option<f64>| x.map_or("n/a".into(), |a| format!("{:.1} %", a * 100.0));
    let loss = |x: Option<f64>| x.map_or("n/a".into(), |l| format!("{l:.3}"));
    eprintln!(
        "tuned in {:.0} s: held-out loss {} -> {}, held-out accuracy {}",
        started.elapsed().as_secs_f64(),
        loss(summary.held_out_loss_before),
        loss(summary.held_out_loss_after),
        pct(summary.accuracy),
    );
    println!("{}", summary.adapter.display());
    Ok(())
}

fn eta(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}
