//! `arny generate`: one prompt in, a streamed answer out.

use anyhow::{Context, Result};
use arny_engine_api::{ChatMessage, Generation, Prompt};

use crate::runtime::{AdapterArgs, ModelArgs, SamplingArgs, load, read_prompt, stream_to_stdout};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    adapter: AdapterArgs,
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
    let request = args.sampling.request(prompt);
    let options = args.adapter.session_options(&model)?;

    futures::executor::block_on(async {
        let mut session = model.new_session(options).await?;
        let generation = Generation::new(model.as_ref(), session.as_mut(), request)?;
        let done = stream_to_stdout(generation).await?;
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
                "adapter": args.adapter.adapter.as_ref().map(|p| p.display().to_string()),
            });
            println!("{summary}");
        }
        Ok::<_, anyhow::Error>(())
    })
    .context("generation failed")
}
