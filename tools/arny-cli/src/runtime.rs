//! What every command shares: picking the engine, finding the model,
//! loading it with a progress bar.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use arny_engine_api::{
    DeviceRequest, EngineKind, GenerateRequest, InferenceEngine, LoadOptions, Model, ModelSource,
    Prompt, SamplingParams, SessionOptions,
};
use indicatif::{ProgressBar, ProgressStyle};

/// Engine and model flags shared by the model-running commands.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Inference engine: gguf (llama.cpp), burn (pure Rust on Burn) or pte
    /// (ExecuTorch programs, XNNPACK).
    #[arg(long, value_enum, default_value_t = EngineKind::Gguf)]
    pub engine: EngineKind,
    /// Device: auto, cpu or gpu (the burn engine; gguf and pte run on the
    /// CPU and refuse gpu).
    #[arg(long, value_enum, default_value_t = DeviceRequest::Auto)]
    pub device: DeviceRequest,
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
    /// How the burn engine holds the weights: packed (the file's blocks,
    /// on the CPU and the GPU; the default), f16, f32 (the float
    /// reference) or q8 (Burn's own 8-bit blocks). Other engines refuse it.
    #[arg(long, value_enum)]
    pub weights: Option<Weights>,
}

/// `--weights`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    Packed,
    F16,
    F32,
    Q8,
}

/// `--template`, for the commands that render conversations.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TemplateArgs {
    /// Chat template to render with instead of the model's own: a built-in
    /// (chatml, qwen, llama3, zephyr, gemma, phi3) or a Jinja file. A model
    /// without a template needs one for chat.
    #[arg(long, value_name = "NAME|FILE")]
    pub template: Option<String>,
}

impl TemplateArgs {
    /// The named template (a built-in's name, or the Jinja file read
    /// once), `None` for the model's own.
    pub fn source(&self) -> Result<Option<String>> {
        let Some(t) = &self.template else {
            return Ok(None);
        };
        if arny_engine_api::BuiltinTemplate::from_name(t).is_some() {
            return Ok(Some(t.clone()));
        }
        let path = std::path::Path::new(t);
        if !path.is_file() {
            bail!(
                "--template {t}: neither a built-in ({}) nor a file",
                arny_engine_api::BuiltinTemplate::names()
            );
        }
        std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))
            .map(Some)
    }
}

/// `messages` as the prompt: rendered with `template` (from
/// [`TemplateArgs::source`]) when one is named, else left to the model's
/// own; a model with neither is refused here, before any work.
pub fn chat_prompt(
    model: &dyn Model,
    template: Option<&str>,
    messages: Vec<arny_engine_api::ChatMessage>,
) -> Result<Prompt> {
    Ok(match template {
        Some(t) => Prompt::Text(arny_engine_api::render_conversation(
            model,
            Some(t),
            &messages,
        )?),
        None if model.chat_template().is_none() => {
            return Err(arny_engine_api::no_template_error().into());
        }
        None => Prompt::Chat(messages),
    })
}

/// `--adapter`, for the commands that run sessions.
#[derive(clap::Args, Debug, Clone)]
pub struct AdapterArgs {
    /// A LoRA adapter (GGUF, e.g. from `arny tune`) over the model; the
    /// engines without adapters refuse it.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// How strongly the adapter applies (1.0: as trained).
    #[arg(long, default_value_t = 1.0, requires = "adapter")]
    pub adapter_scale: f32,
}

impl AdapterArgs {
    /// Session options with the adapter loaded over `model`, if one was
    /// given.
    pub fn session_options(&self, model: &Arc<dyn Model>) -> Result<SessionOptions> {
        let adapter = match &self.adapter {
            None => None,
            Some(path) => Some(
                futures::executor::block_on(
                    model.load_adapter(ModelSource::Path(path.clone()), self.adapter_scale),
                )
                .with_context(|| format!("cannot load the adapter {}", path.display()))?,
            ),
        };
        Ok(SessionOptions {
            adapter,
            ..SessionOptions::default()
        })
    }
}

/// The engine for `kind`, if this build has it, holding weights as
/// `weights` says (the burn engine only).
pub fn engine(kind: EngineKind, weights: Option<Weights>) -> Result<Box<dyn InferenceEngine>> {
    if weights.is_some() && kind != EngineKind::Burn {
        bail!(
            "unsupported: --weights is the burn engine's option; the {kind} engine runs the file as it is"
        );
    }
    match kind {
        EngineKind::Gguf => Ok(Box::new(arny_engine_gguf::GgufEngine::new())),
        #[cfg(feature = "burn")]
        EngineKind::Burn => {
            use arny_engine_burn_wgpu::{BurnEngine, WeightPrecision};
            Ok(Box::new(match weights {
                None => BurnEngine::new(),
                Some(w) => BurnEngine::with_precision(match w {
                    Weights::Packed => WeightPrecision::Packed,
                    Weights::F16 => WeightPrecision::F16,
                    Weights::F32 => WeightPrecision::F32,
                    Weights::Q8 => WeightPrecision::Q8,
                }),
            }))
        }
        #[cfg(feature = "pte")]
        EngineKind::Pte => Ok(Box::new(arny_engine_pte::PteEngine::new())),
        #[allow(unreachable_patterns)]
        other => bail!(
            "unsupported: this arny was built without the {other} engine; rebuild with `cargo build --release -p arny-cli --features {other}`"
        ),
    }
}

/// The model file to use, fetching the default model if it is missing.
pub fn model_path(args: &ModelArgs) -> Result<PathBuf> {
    crate::paths::model_path_for(args.engine, args.model.as_deref())
}

/// Loads the model named by `args`, with a progress bar on a terminal.
pub fn load(args: &ModelArgs) -> Result<(Arc<dyn Model>, PathBuf)> {
    let engine = engine(args.engine, args.weights)?;
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
        device: args.device,
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

/// Sampling flags shared by `generate` and `chat`. Their defaults are
/// llama.cpp's conversational sampler ([`SamplingParams::interactive`]);
/// `--temperature 0` is plain greedy decoding (argmax, no penalty) unless
/// a penalty is asked for.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Maximum tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: u32,
    /// 0 is greedy (deterministic).
    #[arg(long, default_value_t = SamplingParams::interactive().temperature)]
    pub temperature: f32,
    /// Keep the k likeliest tokens; 0 disables.
    #[arg(long, default_value_t = SamplingParams::interactive().top_k)]
    pub top_k: u32,
    /// Keep the likeliest tokens up to this probability; 1 disables.
    #[arg(long, default_value_t = SamplingParams::interactive().top_p)]
    pub top_p: f32,
    /// Drop tokens under this share of the likeliest one; 0 disables.
    #[arg(long, default_value_t = SamplingParams::interactive().min_p)]
    pub min_p: f32,
    /// Penalty on recently generated tokens; 1 disables [default: 1.1
    /// when sampling; none with --temperature 0, which is plain greedy].
    #[arg(long)]
    pub repeat_penalty: Option<f32>,
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
    pub fn request(&self, prompt: Prompt) -> GenerateRequest {
        GenerateRequest {
            sampling: self.params(),
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            ..GenerateRequest::new(prompt)
        }
    }

    pub fn params(&self) -> SamplingParams {
        let base = if self.temperature > 0.0 {
            SamplingParams::interactive()
        } else {
            SamplingParams::greedy()
        };
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty.unwrap_or(base.repetition_penalty),
            seed: self.seed,
            ..base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sampling: SamplingArgs,
    }

    #[test]
    fn sampling_defaults_are_the_engine_apis() {
        let cli = Cli::parse_from(["x"]);
        assert_eq!(cli.sampling.params(), SamplingParams::interactive());
        // --temperature 0 is plain greedy: no penalty unless asked for.
        let cli = Cli::parse_from(["x", "--temperature", "0", "--seed", "3"]);
        let p = cli.sampling.params();
        assert!(p.is_greedy());
        assert_eq!(p.repetition_penalty, 1.0);
        assert_eq!(p.seed, Some(3));
        let cli = Cli::parse_from(["x", "--temperature", "0", "--repeat-penalty", "1.3"]);
        assert_eq!(cli.sampling.params().repetition_penalty, 1.3);
    }
}
