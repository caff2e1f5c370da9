//! `arny conformance`: one model through two engines, compared on the same
//! tokens (teacher-forced top-1 agreement, KL divergence, greedy runs).

use anyhow::Result;
use arny_conformance::compare::{CompareOptions, PROMPTS, compare};
use arny_engine_api::{DeviceRequest, EngineKind, LoadOptions, ModelSource};

use crate::paths::model_path_for;
use crate::runtime::{ModelArgs, engine};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Reference engine, then the candidate. `--device` applies to the
    /// candidate; the reference runs where its engine runs by default.
    #[arg(long, value_enum, default_value = "gguf,gguf", value_delimiter = ',')]
    engines: Vec<EngineKind>,
    /// Threads for the candidate (default: the same as the reference).
    #[arg(long)]
    candidate_threads: Option<u32>,
    /// The candidate's model file, when it differs from the reference's
    /// (default: the candidate engine's default model).
    #[arg(long)]
    candidate_model: Option<std::path::PathBuf>,
    /// How many of the 20 built-in prompts to use.
    #[arg(long, default_value_t = 20)]
    prompts: usize,
    /// Teacher-forced positions per prompt.
    #[arg(long, default_value_t = 64)]
    positions: usize,
    /// Free-running greedy tokens per prompt.
    #[arg(long, default_value_t = 32)]
    greedy: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(
        args.engines.len() == 2,
        "--engines takes two engines: reference,candidate"
    );
    anyhow::ensure!(
        (1..=PROMPTS.len()).contains(&args.prompts) && args.positions > 0 && args.greedy > 0,
        "invalid input: need 1 <= --prompts <= {}, --positions >= 1, --greedy >= 1",
        PROMPTS.len()
    );
    anyhow::ensure!(
        args.model.weights.is_none() || args.engines.contains(&EngineKind::Burn),
        "unsupported: --weights is the burn engine's option, and neither engine is burn"
    );
    // Each engine gets its own format of the model: --model for the
    // reference, --candidate-model for the candidate, else each engine's
    // default (the GGUF, or its ExecuTorch export for pte).
    let (reference_engine, candidate_engine) = (args.engines[0], args.engines[1]);
    let reference_path = model_path_for(reference_engine, args.model.model.as_deref())?;
    let candidate_path = match (&args.candidate_model, reference_engine == candidate_engine) {
        (None, true) => reference_path.clone(),
        (m, _) => model_path_for(candidate_engine, m.as_deref())?,
    };
    let load =
        |kind: EngineKind, path: &std::path::Path, threads: Option<u32>, device: DeviceRequest| {
            // --weights is the burn engine's, whichever side it is on.
            let e = engine(
                kind,
                args.model.weights.filter(|_| kind == EngineKind::Burn),
            )?;
            let options = LoadOptions {
                context_length: args.model.ctx,
                threads,
                device,
                ..LoadOptions::default()
            };
            anyhow::Ok(futures::executor::block_on(
                e.load(ModelSource::Path(path.to_path_buf()), options),
            )?)
        };
    let reference = load(
        reference_engine,
        &reference_path,
        args.model.threads,
        DeviceRequest::Auto,
    )?;
    let candidate = load(
        candidate_engine,
        &candidate_path,
        args.candidate_threads.or(args.model.threads),
        args.model.device,
    )?;
    let opts = CompareOptions {
        prompts: PROMPTS[..args.prompts]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        positions: args.positions,
        greedy_tokens: args.greedy,
    };
    let report =
        futures::executor::block_on(compare(reference.as_ref(), candidate.as_ref(), &opts))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "reference: {}\ncandidate: {}",
        report.reference, report.candidate
    );
    println!(
        "{:<46} {:>6} {:>9} {:>9} {:>7}",
        "prompt", "top-1", "mean KL", "max KL", "greedy"
    );
    for p in &report.prompts {
        let name: String = p.prompt.chars().take(45).collect();
        println!(
            "{name:<46} {:>6.3} {:>9.5} {:>9.5} {:>3}/{:<3}",
            p.top1_agreement, p.mean_kl, p.max_kl, p.greedy_common_prefix, p.greedy_tokens
        );
    }
    println!(
        "all: top-1 agreement {:.4}, mean KL {:.6} nats, max KL {:.5}, identical greedy runs {}/{}",
        report.top1_agreement,
        report.mean_kl,
        report.max_kl,
        report.greedy_identical,
        report.prompts.len()
    );
    if let Some(gap) = report.disagreement_gap_median {
        println!(
            "where top-1 differs, the reference preferred its token by a median {gap:.3} nats \
             (its median top-2 gap everywhere: {:.3})",
            report.top2_gap_median
        );
    }
    Ok(())
}
