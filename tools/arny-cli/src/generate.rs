//! `arny generate`: one prompt in, a streamed answer out.

use std::io::Write;

use anyhow::{Context, Result};
use arny_engine_api::{ChatMessage, GenerateRequest, Generation, Prompt, SessionOptions};

use crate::runtime::{ModelArgs, SamplingArgs, load, read_prompt};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print a JSON summary (text, token ids, timings) as the last line.
    #[arg(long)]
    json: bool,
    /// Send the prompt as raw text, without the chat template.
    #[arg(long)]
    raw: bool,
    /// The prompt; `-` reads it from stdin.
    prompt: String,
}

pub fn run(args: Args) -> Result<()> {
    let text = read_prompt(&args.prompt)?;
    let (model, path) = load(&args.model)?;
    let prompt = if args.raw {
        Prompt::Text(text)
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.sampling.system {
            messages.push(ChatMessage::system(system.clone()));
        }
        messages.push(ChatMessage::user(text));
        Prompt::Chat(messages)
    };
    let request = GenerateRequest {
        sampling: args.sampling.params(),
        max_tokens: args.sampling.max_tokens,
        stop: args.sampling.stop.clone(),
        ..GenerateRequest::new(prompt)
    };

    futures::executor::block_on(async {
        let mut session = model.new_session(SessionOptions::default()).await?;
        let mut generation = Generation::new(model.as_ref(), session.as_mut(), request)?;
        let mut out = std::io::stdout().lock();
        while let Some(event) = generation.next_token().await? {
            out.write_all(event.text.as_bytes())?;
            out.flush()?;
        }
        let done = generation.finish();
        out.write_all(done.tail.as_bytes())?;
        writeln!(out)?;
        if args.json {
            let summary = serde_json::json!({
                "text": done.text,
                "tokens": done.tokens,
                "prompt_tokens": done.usage.prompt_tokens,
                "generated_tokens": done.usage.generated_tokens,
                "ttft_ms": done.usage.ttft_ms,
                "prefill_tok_s": done.usage.prefill_tok_s,
                "decode_tok_s": done.usage.decode_tok_s,
                "finish_reason": done.finish_reason,
                "engine": model.info().engine,
                "model": path.display().to_string(),
            });
            writeln!(out, "{summary}")?;
        }
        Ok::<_, anyhow::Error>(())
    })
    .context("generation failed")
}
