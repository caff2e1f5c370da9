//! `arny bench`: llama-bench-style throughput through the SDK, side by side
//! with the same workload through raw llama-cpp-2 calls.
//!
//! Both paths get the same prompt tokens, context, batch size and threads,
//! and alternate rep by rep, so a busy neighbour slows both alike. The
//! ratio of their medians is the SDK's overhead.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use arny_engine_api::{
    GenerateRequest, LoadOptions, Model, ModelSource, Prompt, SamplingParams, SessionOptions,
    TokenId, generate,
};
use serde::Serialize;

use crate::runtime::{ModelArgs, engine, model_path};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt tokens processed in one go (pp).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: usize,
    /// Tokens generated one at a time (tg).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    /// Repetitions; medians and spread are over these.
    #[arg(short = 'r', long = "reps", default_value_t = 5)]
    reps: usize,
    /// Skip the raw llama-cpp-2 baseline.
    #[arg(long)]
    no_raw: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Measure specialist switching instead: cold load, warm switch between
    /// resident models, and a universal-plan role switch (medians over -r).
    #[arg(long)]
    switch: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Stats {
    pub(crate) fn of(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let median = if n == 0 {
            0.0
        } else if n % 2 == 1 {
            samples[n / 2]
        } else {
            (samples[n / 2 - 1] + samples[n / 2]) / 2.0
        };
        Self {
            median,
            min: samples.first().copied().unwrap_or(0.0),
            max: samples.last().copied().unwrap_or(0.0),
            samples,
        }
    }
}

#[derive(Debug, Serialize)]
struct Pair {
    arny: Stats,
    raw: Option<Stats>,
    /// arny median / raw median; 1.0 means no overhead.
    ratio: Option<f64>,
}

impl Pair {
    fn new(arny: Vec<f64>, raw: Option<Vec<f64>>) -> Self {
        let arny = Stats::of(arny);
        let raw = raw.map(Stats::of);
        let ratio = raw
            .as_ref()
            .filter(|r| r.median > 0.0)
            .map(|r| arny.median / r.median);
        Self { arny, raw, ratio }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    engine: String,
    model: String,
    quantization: String,
    parameters: u64,
    threads: u32,
    n_prompt: usize,
    n_gen: usize,
    reps: usize,
    /// Prompt processing, tokens per second.
    pp_tok_s: Pair,
    /// Token generation, tokens per second.
    tg_tok_s: Pair,
    load_ms: Pair,
    peak_rss_bytes: Option<u64>,
    cpu_cores: usize,
    /// 1-minute load average when the bench started (Linux).
    load_average: Option<f64>,
}

pub fn run(args: Args) -> Result<()> {
    if args.switch {
        if args.reps == 0 {
            bail!("invalid input: need -r >= 1");
        }
        return crate::bench_switch::run(&model_path(&args.model)?, args.reps, args.json);
    }
    if args.n_prompt == 0 || args.n_gen < 2 || args.reps == 0 {
        bail!("invalid input: need -p >= 1, -n >= 2 and -r >= 1");
    }
    // The raw baseline is llama.cpp's own API: it exists for gguf only.
    let no_raw = args.no_raw || args.engine_is_not_gguf();
    let load_average = read_loadavg();
    let path = model_path(&args.model)?;
    let engine = engine(&args.model.engine)?;
    let ctx = (args.n_prompt + args.n_gen + 1) as u32;
    let options = LoadOptions {
        context_length: Some(ctx),
        threads: args.model.threads,
        device: crate::runtime::device(&args.model.device)?,
        ..LoadOptions::default()
    };
    let load = || -> Result<(Arc<dyn Model>, f64)> {
        let t = Instant::now();
        let m = futures::executor::block_on(
            engine.load(ModelSource::Path(path.clone()), options.clone()),
        )?;
        Ok((m, t.elapsed().as_secs_f64() * 1e3))
    };
    let (model, _) = load()?;
    let threads = args
        .model
        .threads
        .unwrap_or_else(arny_engine_api::default_threads);
    // A program with a fixed context (an ExecuTorch export) may hold fewer
    // tokens than -p + -n: the prompt shrinks to fit, and the report says so.
    let capacity = model.info().context_length as usize;
    let n_prompt = if args.n_prompt + args.n_gen + 1 > capacity {
        if args.n_gen + 2 > capacity {
            bail!(
                "invalid input: -n {} does not fit the model's context of {capacity}",
                args.n_gen
            );
        }
        let n = capacity - args.n_gen - 1;
        eprintln!(
            "note: the model holds {capacity} tokens; prompt shortened from {} to {n}",
            args.n_prompt
        );
        n
    } else {
        args.n_prompt
    };
    let tokens = workload(model.as_ref(), n_prompt);
    let raw = if no_raw {
        None
    } else {
        Some(crate::bench_raw::RawBench::new(&path, threads, ctx)?)
    };

    // Warm caches and page in the weights on both paths before timing.
    let warm = &tokens[..tokens.len().min(32)];
    sdk_run(model.as_ref(), warm, 4, ctx)?;
    if let Some(r) = &raw {
        r.run(warm, 4)?;
    }

    let (mut pp, mut tg, mut ld) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rpp, mut rtg, mut rld) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..args.reps {
        let sdk = |pp: &mut Vec<f64>, tg: &mut Vec<f64>| -> Result<()> {
            let (a, b) = sdk_run(model.as_ref(), &tokens, args.n_gen, ctx)?;
            pp.push(a);
            tg.push(b);
            Ok(())
        };
        let raw_rep = |rpp: &mut Vec<f64>, rtg: &mut Vec<f64>| -> Result<()> {
            if let Some(r) = &raw {
                let (a, b) = r.run(&tokens, args.n_gen)?;
                rpp.push(a);
                rtg.push(b);
            }
            Ok(())
        };
        // Alternate the order so neither path always runs on a warmer cache.
        if rep % 2 == 0 {
            sdk(&mut pp, &mut tg)?;
            raw_rep(&mut rpp, &mut rtg)?;
        } else {
            raw_rep(&mut rpp, &mut rtg)?;
            sdk(&mut pp, &mut tg)?;
        }
        ld.push(load()?.1);
        if let Some(r) = &raw {
            rld.push(r.load_ms(&path)?);
        }
        tracing::info!(rep, "bench rep done");
    }
    let with_raw = |v: Vec<f64>| raw.as_ref().map(|_| v);
    let info = model.info();
    let report = Report {
        engine: info.engine.clone(),
        model: path.display().to_string(),
        quantization: info.quantization.clone(),
        parameters: info.parameters,
        threads,
        n_prompt,
        n_gen: args.n_gen,
        reps: args.reps,
        pp_tok_s: Pair::new(pp, with_raw(rpp)),
        tg_tok_s: Pair::new(tg, with_raw(rtg)),
        load_ms: Pair::new(ld, with_raw(rld)),
        peak_rss_bytes: peak_rss(),
        cpu_cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        load_average,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

impl Args {
    fn engine_is_not_gguf(&self) -> bool {
        self.model.engine != arny_engine_gguf::ENGINE_ID
    }
}

/// Deterministic pseudo-random prompt tokens, skipping special tokens so
/// that no path stops early or treats them differently.
fn workload(model: &dyn Model, n: usize) -> Vec<TokenId> {
    let vocab = u64::from(model.info().vocab_size.max(1));
    let special = model.special_tokens();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let t = ((state >> 33) % vocab) as TokenId;
        if special.is_end_of_generation(t) || Some(t) == special.bos {
            continue;
        }
        out.push(t);
    }
    out
}

/// One SDK rep: returns (prefill tok/s, decode tok/s).
fn sdk_run(model: &dyn Model, tokens: &[TokenId], n_gen: usize, ctx: u32) -> Result<(f64, f64)> {
    futures::executor::block_on(async {
        let mut session = model
            .new_session(SessionOptions {
                context_length: Some(ctx),
            })
            .await?;
        let request = GenerateRequest {
            sampling: SamplingParams::greedy(),
            max_tokens: n_gen as u32,
            ignore_eos: true,
            ..GenerateRequest::new(Prompt::Tokens(tokens.to_vec()))
        };
        let done = generate(model, session.as_mut(), request, |_| {}).await?;
        Ok((done.usage.prefill_tok_s, done.usage.decode_tok_s))
    })
}

fn print_table(r: &Report) {
    println!(
        "model    {} ({}, {:.0} M params)",
        r.model,
        r.quantization,
        r.parameters as f64 / 1e6
    );
    println!(
        "engine   {}, {} thread(s), {} cores, load average {}",
        r.engine,
        r.threads,
        r.cpu_cores,
        r.load_average
            .map(|l| format!("{l:.2}"))
            .unwrap_or_else(|| "n/a".into())
    );
    println!(
        "{:<10} {:<5} {:>10} {:>10} {:>10}",
        "test", "path", "median", "min", "max"
    );
    let rows = [
        (format!("pp{}", r.n_prompt), "tok/s", &r.pp_tok_s),
        (format!("tg{}", r.n_gen), "tok/s", &r.tg_tok_s),
        ("load".to_string(), "ms", &r.load_ms),
    ];
    for (name, unit, pair) in rows {
        let line = |path: &str, s: &Stats| {
            println!(
                "{:<10} {:<5} {:>10.2} {:>10.2} {:>10.2}  {unit}",
                name, path, s.median, s.min, s.max
            )
        };
        line("arny", &pair.arny);
        if let Some(raw) = &pair.raw {
            line("raw", raw);
        }
        if let Some(ratio) = pair.ratio {
            println!("{:<10} ratio arny/raw = {ratio:.3}", "");
        }
    }
    if let Some(b) = r.peak_rss_bytes {
        println!("peak RSS {:.1} MiB", b as f64 / (1024.0 * 1024.0));
    }
}

/// Peak resident set size of this process (Linux: VmHWM).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn read_loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
