//! What every command shares: picking the engine, finding the model,
//! loading it with a progress bar.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use arny_engine_api::{InferenceEngine, LoadOptions, Model, ModelSource};
use arny_model_store as store;
use indicatif::{ProgressBar, ProgressStyle};

/// Engine and model flags shared by the model-running commands.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Inference engine: gguf (llama.cpp), burn (pure Rust on Burn) or pte
    /// (ExecuTorch programs, XNNPACK).
    #[arg(long, default_value = "gguf")]
    pub engine: String,
    /// Device: auto, cpu or gpu (the burn engine; gguf and pte run on the
    /// CPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Model file. Default: $ARNY_MODEL, else the default model in the cache
    /// (fetched on first use); for the pte engine, the cached fp32 export of
    /// the default model (exported on first use, about 5 min). A folder
    /// means its model.pte.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Context length in tokens (default: 4096 or the model's, if smaller).
    #[arg(long)]
    pub ctx: Option<u32>,
    /// Compute threads (default: 1 on machines with up to 2 cores, else half
    /// the cores, at most 8).
    #[arg(long)]
    pub threads: Option<u32>,
}

/// The engine for an id from the command line or a config.
pub fn engine(id: &str) -> Result<Box<dyn InferenceEngine>> {
    match id {
        arny_engine_gguf::ENGINE_ID => Ok(Box::new(arny_engine_gguf::GgufEngine::new())),
        arny_engine_burn_wgpu::ENGINE_ID => Ok(Box::new(arny_engine_burn_wgpu::BurnEngine::new())),
        arny_engine_pte::ENGINE_ID => Ok(Box::new(arny_engine_pte::PteEngine::new())),
        other => bail!("unknown engine `{other}`; available: gguf, burn, pte"),
    }
}

/// The `--device` flag.
pub fn device(name: &str) -> Result<arny_engine_api::DeviceRequest> {
    use arny_engine_api::DeviceRequest;
    Ok(match name {
        "auto" => DeviceRequest::Auto,
        "cpu" => DeviceRequest::Cpu,
        "gpu" => DeviceRequest::Gpu,
        other => bail!("unknown device `{other}`; use auto, cpu or gpu"),
    })
}

/// The model file to use, fetching the default model if it is missing.
pub fn model_path(args: &ModelArgs) -> Result<PathBuf> {
    model_path_for(&args.engine, args.model.as_deref())
}

/// The model file for `engine`: `model` if given, else that engine's
/// default (fetched or exported when missing).
pub fn model_path_for(engine: &str, model: Option<&std::path::Path>) -> Result<PathBuf> {
    if engine == arny_engine_pte::ENGINE_ID {
        return match model {
            Some(p) if p.is_dir() => Ok(p.join("model.pte")),
            Some(p) => Ok(p.to_path_buf()),
            None => crate::export::default_export(store::pte::PteQuant::Fp32),
        };
    }
    if let Some(p) = model {
        return Ok(p.to_path_buf());
    }
    match store::require_default_model() {
        Ok(p) => Ok(p),
        Err(store::StoreError::Missing { .. }) => {
            eprintln!(
                "The default model ({}) is not in {} yet; fetching it.",
                store::DEFAULT_MODEL.description,
                store::models_dir().display()
            );
            Ok(crate::models::fetch_with_progress(&store::DEFAULT_MODEL)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Loads the model named by `args`, with a progress bar on a terminal.
pub fn load(args: &ModelArgs) -> Result<(Arc<dyn Model>, PathBuf)> {
    let engine = engine(&args.engine)?;
    let path = model_path(args)?;
    let bar = ProgressBar::new(100).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {percent}%")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(format!(
        "Loading {}",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    bar.enable_steady_tick(Duration::from_millis(100));
    let progress_bar = bar.clone();
    let options = LoadOptions {
        context_length: args.ctx,
        threads: args.threads,
        progress: Some(Arc::new(move |p| {
            progress_bar.set_position((p * 100.0) as u64);
        })),
        device: device(&args.device)?,
        ..LoadOptions::default()
    };
    let loaded = futures::executor::block_on(engine.load(ModelSource::Path(path.clone()), options));
    bar.finish_and_clear();
    let model = loaded.context("cannot load the model")?;
    Ok((model, path))
}

/// Streams a generation's text to stdout as it arrives and returns the
/// finished completion (its tail and a newline already printed).
pub async fn stream_to_stdout(
    mut generation: arny_engine_api::Generation<'_>,
) -> Result<arny_engine_api::Completion> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    while let Some(event) = generation.next_token().await? {
        out.write_all(event.text.as_bytes())?;
        out.flush()?;
    }
    let done = generation.finish();
    out.write_all(done.tail.as_bytes())?;
    writeln!(out)?;
    out.flush()?;
    Ok(done)
}

/// Reads the prompt argument; `-` means standard input.
pub fn read_prompt(arg: &str) -> Result<String> {
    let text = if arg == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading the prompt from stdin")?;
        s
    } else {
        arg.to_string()
    };
    if text.trim().is_empty() {
        bail!("invalid input: the prompt is empty");
    }
    Ok(text)
}

/// Sampling flags shared by `generate` and `chat`.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Maximum tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: u32,
    /// 0 is greedy (deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// 0 disables.
    #[arg(long, default_value_t = 40)]
    pub top_k: u32,
    /// 1 disables.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// 0 disables.
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// 1 disables.
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Seed for sampling (default 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when the output contains this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// A system message to start the conversation with.
    #[arg(long)]
    pub system: Option<String>,
}

impl SamplingArgs {
    /// A request for `prompt` with these flags.
    pub fn request(&self, prompt: arny_engine_api::Prompt) -> arny_engine_api::GenerateRequest {
        arny_engine_api::GenerateRequest {
            sampling: self.params(),
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            ..arny_engine_api::GenerateRequest::new(prompt)
        }
    }

    pub fn params(&self) -> arny_engine_api::SamplingParams {
        arny_engine_api::SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            seed: self.seed,
            ..Default::default()
        }
    }
}
