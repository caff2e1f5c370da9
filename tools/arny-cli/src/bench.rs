//! `arny bench`: llama-bench-style throughput through the SDK, side by side
//! with the same workload through raw llama-cpp-2 calls.
//!
//! Both paths get the same prompt tokens, context, batch size and threads,
//! and alternate rep by rep, so a busy neighbour slows both alike. The
//! ratio of their medians is the SDK's overhead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arny_engine_api::{
    Adapter, EngineKind, FinishReason, GenerateRequest, LoadOptions, Model, ModelSource, Prompt,
    SamplingParams, SessionOptions, TokenId, generate,
};
use serde::Serialize;

use crate::runtime::{ModelArgs, engine, model_path};
use crate::stats::Stats;

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
    /// Run the sessions with this LoRA adapter; the baseline is then the
    /// same model without it (in place of raw llama.cpp), so the ratio is
    /// the adapter's cost.
    #[arg(long)]
    adapter: Option<std::path::PathBuf>,
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
struct ReportedBytes {
    model: u64,
    session: u64,
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
    cancel: CancelReport,
    /// Peak RSS over the load and the pp/tg reps (with the raw baseline,
    /// its own copy of the model too: `--no-raw` for the SDK alone).
    peak_rss_bytes: Option<u64>,
    /// What the engine says the model and one bench session hold (what the
    /// SDK's memory budget counts), to hold beside the peak RSS.
    reported_bytes: ReportedBytes,
    cpu_cores: usize,
    /// 1-minute load average when the bench started (Linux).
    load_average: Option<f64>,
    /// What `raw` is: `llama-cpp-2` (llama.cpp's own API) or `no adapter`
    /// (the same engine and model without `--adapter`).
    baseline: &'static str,
    adapter: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    if args.switch {
        if args.adapter.is_some() {
            bail!(
                "unsupported: --adapter with --switch (the switch bench uses the shipped math adapter itself)"
            );
        }
        if args.reps == 0 {
            bail!("invalid input: need -r >= 1");
        }
        return crate::bench_switch::run(&model_path(&args.model)?, args.reps, args.json);
    }
    if args.n_prompt == 0 || args.n_gen < 2 || args.reps == 0 {
        bail!("invalid input: need -p >= 1, -n >= 2 and -r >= 1");
    }
    let load_average = read_loadavg();
    let bench = Bench::new(&args)?;
    let samples = bench.measure(args.reps)?;
    let report = bench.report(&args, samples, load_average);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// The GGUF a `.pte` program at `program` was exported from, when its
/// export record says it is the default model (whose file the model store
/// finds or fetches by its SHA-256).
fn pte_source(program: &std::path::Path) -> Option<std::path::PathBuf> {
    let dir = if program.is_dir() {
        program.to_path_buf()
    } else {
        program.parent()?.to_path_buf()
    };
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("arny-export.json")).ok()?).ok()?;
    let sha = record.get("source_sha256")?.as_str()?;
    (sha == arny_model_store::DEFAULT_MODEL.sha256)
        .then(|| arny_model_store::require_default_model().ok())
        .flatten()
}

/// One bench's model, workload and raw baseline, ready to time.
struct Bench {
    path: std::path::PathBuf,
    engine: Box<dyn arny_engine_api::InferenceEngine>,
    options: LoadOptions,
    model: Arc<dyn Model>,
    threads: u32,
    ctx: u32,
    n_gen: usize,
    tokens: Vec<TokenId>,
    raw: Option<crate::bench_raw::RawBench>,
    adapter: Option<Arc<dyn Adapter>>,
}

/// Per-rep measurements of both paths.
#[derive(Default)]
struct Samples {
    pp: Vec<f64>,
    tg: Vec<f64>,
    load: Vec<f64>,
    raw_pp: Vec<f64>,
    raw_tg: Vec<f64>,
    raw_load: Vec<f64>,
    /// Milliseconds from a cancel to the generation's return, with the
    /// cancel landing in the prefill or in the decode.
    cancel_prefill: Vec<f64>,
    cancel_decode: Vec<f64>,
    /// The session's prefill chunk, in tokens.
    batch: usize,
    peak_rss: Option<u64>,
    /// The most a bench session said it held.
    session_bytes: u64,
}

/// How fast a cancel takes effect, beside what one prefill chunk and one
/// token take: the generation loop checks between them, so a cancel should
/// land within one of each.
#[derive(Debug, Serialize)]
struct CancelReport {
    prefill_ms: Stats,
    /// One chunk of `batch` prompt tokens at the measured prefill speed.
    prefill_chunk_ms: f64,
    batch: usize,
    decode_ms: Stats,
    /// One token at the measured decode speed.
    token_ms: f64,
}

impl Bench {
    fn new(args: &Args) -> Result<Self> {
        // The raw baseline is llama.cpp's own API on the same file: the gguf
        // engine's overhead, and the Burn engine's speed beside llama.cpp's.
        // A `.pte` program is compared with llama.cpp on the GGUF it was
        // exported from, when its export record names a file found here.
        let path = model_path(&args.model)?;
        let raw_path = match args.model.engine {
            EngineKind::Gguf | EngineKind::Burn => Some(path.clone()),
            EngineKind::Pte => pte_source(&path),
        };
        let no_raw = args.no_raw || args.adapter.is_some() || raw_path.is_none();
        if args.model.engine == EngineKind::Pte && raw_path.is_none() && !args.no_raw {
            tracing::warn!(
                "no raw llama.cpp baseline: the program's export record does not name the default model as its source"
            );
        }
        let engine = engine(args.model.engine, args.model.weights)?;
        // Sessions get the bench's context; the load keeps the model's
        // default, which a fixed-context program (an ExecuTorch export)
        // cannot exceed.
        let options = LoadOptions {
            threads: args.model.threads,
            device: args.model.device,
            ..LoadOptions::default()
        };
        let model = load(engine.as_ref(), &path, &options)?.0;
        let threads = args
            .model
            .threads
            .unwrap_or_else(arny_engine_api::default_threads);
        let n_prompt = fit_prompt(model.as_ref(), args.n_prompt, args.n_gen)?;
        let ctx = (n_prompt + args.n_gen + 1) as u32;
        let tokens = workload(model.as_ref(), n_prompt);
        let adapter = match &args.adapter {
            None => None,
            Some(p) => Some(
                futures::executor::block_on(model.load_adapter(ModelSource::Path(p.clone()), 1.0))
                    .with_context(|| format!("cannot load the adapter {}", p.display()))?,
            ),
        };
        let raw = if no_raw {
            None
        } else {
            let raw_path = raw_path.as_deref().expect("checked above");
            Some(crate::bench_raw::RawBench::new(raw_path, threads, ctx)?)
        };
        Ok(Self {
            path,
            engine,
            options,
            model,
            threads,
            ctx,
            n_gen: args.n_gen,
            tokens,
            raw,
            adapter,
        })
    }

    /// Warms both paths up, then alternates them rep by rep so neither
    /// always runs on a warmer cache.
    fn measure(&self, reps: usize) -> Result<Samples> {
        let warm = &self.tokens[..self.tokens.len().min(32)];
        let (_, _, held) = sdk_run(self.model.as_ref(), warm, 4, self.ctx, self.adapter.clone())?;
        let mut s = Samples {
            session_bytes: held,
            ..Samples::default()
        };
        if let Some(r) = &self.raw {
            r.run(warm, 4)?;
        }
        for rep in 0..reps {
            if rep % 2 == 0 {
                self.sdk_rep(&mut s)?;
                self.raw_rep(&mut s)?;
            } else {
                self.raw_rep(&mut s)?;
                self.sdk_rep(&mut s)?;
            }
            tracing::info!(rep, "bench rep done");
        }
        // The peak of one model and its session, as an app holds them:
        // read before the load reps, which map the file a second time.
        s.peak_rss = peak_rss();
        for _ in 0..reps {
            s.load
                .push(load(self.engine.as_ref(), &self.path, &self.options)?.1);
            if let Some(r) = &self.raw {
                s.raw_load.push(r.load_ms(&r.path)?);
            }
        }
        // Cancels at times spread over each phase, from another thread, as
        // a client that goes away does.
        let prefill_s = self.tokens.len() as f64 / Stats::of(s.pp.clone()).median;
        let token_s = 1.0 / Stats::of(s.tg.clone()).median;
        for rep in 0..reps {
            let frac = (rep as f64 + 0.5) / reps as f64;
            let (ms, batch) = self.cancel_run(prefill_s * frac)?;
            s.batch = batch;
            s.cancel_prefill.extend(ms);
            let decode_at = prefill_s + token_s * (self.n_gen as f64 - 1.0) * frac;
            s.cancel_decode.extend(self.cancel_run(decode_at)?.0);
        }
        Ok(s)
    }

    /// One generation cancelled `after` seconds in: the milliseconds from
    /// the cancel to the return (none if it ended first), and the
    /// session's prefill chunk.
    fn cancel_run(&self, after: f64) -> Result<(Option<f64>, usize)> {
        futures::executor::block_on(async {
            let model = self.model.as_ref();
            let mut session = model
                .new_session(SessionOptions {
                    context_length: Some(self.ctx),
                    adapter: self.adapter.clone(),
                })
                .await?;
            let batch = session.preferred_batch();
            let request = GenerateRequest {
                sampling: SamplingParams::greedy(),
                max_tokens: self.n_gen as u32,
                ignore_eos: true,
                ..GenerateRequest::new(Prompt::Tokens(self.tokens.clone()))
            };
            let cancel = request.cancel.clone();
            let timer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs_f64(after.max(0.0)));
                cancel.cancel();
                Instant::now()
            });
            let done = generate(model, session.as_mut(), request, |_| {}).await?;
            let returned = Instant::now();
            let fired = timer.join().expect("the cancel timer");
            let ms = (done.finish_reason == FinishReason::Cancelled)
                .then(|| returned.checked_duration_since(fired))
                .flatten()
                .map(|d| d.as_secs_f64() * 1e3);
            Ok((ms, batch))
        })
    }

    fn sdk_rep(&self, s: &mut Samples) -> Result<()> {
        let (pp, tg, held) = sdk_run(
            self.model.as_ref(),
            &self.tokens,
            self.n_gen,
            self.ctx,
            self.adapter.clone(),
        )?;
        s.pp.push(pp);
        s.tg.push(tg);
        s.session_bytes = s.session_bytes.max(held);
        Ok(())
    }

    fn raw_rep(&self, s: &mut Samples) -> Result<()> {
        if self.adapter.is_some() {
            let (pp, tg, _) = sdk_run(
                self.model.as_ref(),
                &self.tokens,
                self.n_gen,
                self.ctx,
                None,
            )?;
            s.raw_pp.push(pp);
            s.raw_tg.push(tg);
        }
        if let Some(r) = &self.raw {
            let (pp, tg) = r.run(&self.tokens, self.n_gen)?;
            s.raw_pp.push(pp);
            s.raw_tg.push(tg);
        }
        Ok(())
    }

    fn report(&self, args: &Args, s: Samples, load_average: Option<f64>) -> Report {
        let baseline = self.raw.is_some() || self.adapter.is_some();
        let with_raw = |v: Vec<f64>| baseline.then_some(v);
        let info = self.model.info();
        let cancel = CancelReport {
            prefill_chunk_ms: s.batch as f64 / Stats::of(s.pp.clone()).median * 1e3,
            batch: s.batch,
            token_ms: 1e3 / Stats::of(s.tg.clone()).median,
            prefill_ms: Stats::of(s.cancel_prefill),
            decode_ms: Stats::of(s.cancel_decode),
        };
        Report {
            engine: info.engine.clone(),
            model: self.path.display().to_string(),
            quantization: info.quantization.clone(),
            parameters: info.parameters,
            threads: self.threads,
            n_prompt: self.tokens.len(),
            n_gen: self.n_gen,
            reps: args.reps,
            pp_tok_s: Pair::new(s.pp, with_raw(s.raw_pp)),
            tg_tok_s: Pair::new(s.tg, with_raw(s.raw_tg)),
            cancel,
            load_ms: Pair::new(s.load, self.raw.as_ref().map(|_| s.raw_load)),
            peak_rss_bytes: s.peak_rss,
            reported_bytes: ReportedBytes {
                model: info.resident_bytes,
                session: s.session_bytes,
            },
            cpu_cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            load_average,
            baseline: if self.adapter.is_some() {
                "no adapter"
            } else {
                "llama-cpp-2"
            },
            adapter: args.adapter.as_ref().map(|p| p.display().to_string()),
        }
    }
}

/// Loads the model, timed in milliseconds.
fn load(
    engine: &dyn arny_engine_api::InferenceEngine,
    path: &std::path::Path,
    options: &LoadOptions,
) -> Result<(Arc<dyn Model>, f64)> {
    let t = Instant::now();
    let m = futures::executor::block_on(
        engine.load(ModelSource::Path(path.to_path_buf()), options.clone()),
    )?;
    Ok((m, t.elapsed().as_secs_f64() * 1e3))
}

/// The prompt length to use: `n_prompt`, or less when the model holds
/// fewer than `n_prompt + n_gen + 1` tokens (it says so on stderr).
fn fit_prompt(model: &dyn Model, n_prompt: usize, n_gen: usize) -> Result<usize> {
    let capacity = model.info().max_context_length as usize;
    if n_prompt + n_gen < capacity {
        return Ok(n_prompt);
    }
    if n_gen + 2 > capacity {
        bail!("invalid input: -n {n_gen} does not fit the model's context of {capacity}");
    }
    let n = capacity - n_gen - 1;
    eprintln!("note: the model holds {capacity} tokens; prompt shortened from {n_prompt} to {n}");
    Ok(n)
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
fn sdk_run(
    model: &dyn Model,
    tokens: &[TokenId],
    n_gen: usize,
    ctx: u32,
    adapter: Option<Arc<dyn Adapter>>,
) -> Result<(f64, f64, u64)> {
    futures::executor::block_on(async {
        let mut session = model
            .new_session(SessionOptions {
                context_length: Some(ctx),
                adapter,
            })
            .await?;
        let request = GenerateRequest {
            sampling: SamplingParams::greedy(),
            max_tokens: n_gen as u32,
            ignore_eos: true,
            ..GenerateRequest::new(Prompt::Tokens(tokens.to_vec()))
        };
        let done = generate(model, session.as_mut(), request, |_| {}).await?;
        Ok((
            done.usage.prefill_tok_s,
            done.usage.decode_tok_s,
            session.resident_bytes(),
        ))
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
        let (with, without) = if r.adapter.is_some() {
            ("lora", "base")
        } else {
            ("arny", "raw")
        };
        line(with, &pair.arny);
        if let Some(raw) = &pair.raw {
            line(without, raw);
        }
        if let Some(ratio) = pair.ratio {
            println!("{:<10} ratio {with}/{without} = {ratio:.3}", "");
        }
    }
    let c = &r.cancel;
    println!(
        "cancel in prefill: {:.1} ms median, {:.1} max (one {}-token chunk: {:.1} ms); in decode: {:.1} ms median, {:.1} max (one token: {:.1} ms)",
        c.prefill_ms.median,
        c.prefill_ms.max,
        c.batch,
        c.prefill_chunk_ms,
        c.decode_ms.median,
        c.decode_ms.max,
        c.token_ms
    );
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    if let Some(b) = r.peak_rss_bytes {
        println!(
            "peak RSS {:.1} MiB; the engine reports {:.1} MiB held (model {:.1}, session {:.1})",
            mib(b),
            mib(r.reported_bytes.model + r.reported_bytes.session),
            mib(r.reported_bytes.model),
            mib(r.reported_bytes.session)
        );
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
