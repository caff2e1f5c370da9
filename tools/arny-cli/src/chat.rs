//! `arny chat`: a terminal conversation that reuses the KV cache.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Result;
use arny_engine_api::{ChatMessage, Generation};

use crate::runtime::{
    AdapterArgs, ModelArgs, SamplingArgs, TemplateArgs, chat_prompt, load, stream_to_stdout,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    adapter: AdapterArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    template: TemplateArgs,
    /// Print token counts and speed after each answer (on stderr).
    #[arg(long)]
    stats: bool,
}

const HELP: &str = "Commands: /reset starts over, /exit (or Ctrl-D) quits.";

pub fn run(args: Args) -> Result<()> {
    let (model, _) = load(&args.model)?;
    let template = args.template.source()?;
    // A model without a template is refused before the first line is read.
    if template.is_none() && model.chat_template().is_none() {
        return Err(arny_engine_api::no_template_error().into());
    }
    let options = args.adapter.session_options(&model)?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "Chatting with {} on {} ({}). {HELP}",
            model.info().name.as_deref().unwrap_or("the model"),
            model.info().engine,
            model.info().device
        );
    }
    let fresh = || {
        args.sampling
            .system
            .iter()
            .map(|s| ChatMessage::system(s.clone()))
            .collect::<Vec<_>>()
    };
    futures::executor::block_on(async {
        let mut session = model.new_session(options).await?;
        let mut conversation = fresh();
        let mut lines = std::io::stdin().lock().lines();
        loop {
            if interactive {
                eprint!("> ");
                std::io::stderr().flush()?;
            }
            let Some(line) = lines.next() else { break };
            let line = line?;
            match line.trim() {
                "" => continue,
                "/exit" | "/quit" => break,
                "/reset" => {
                    conversation = fresh();
                    eprintln!("(conversation cleared)");
                    continue;
                }
                "/help" => {
                    eprintln!("{HELP}");
                    continue;
                }
                _ => {}
            }
            conversation.push(ChatMessage::user(line.clone()));
            let request = |c: &Vec<ChatMessage>| -> Result<_> {
                let prompt = chat_prompt(model.as_ref(), template.as_deref(), c.clone())?;
                Ok(args.sampling.request(prompt))
            };
            let mut generation =
                Generation::new(model.as_ref(), session.as_mut(), request(&conversation)?);
            if let Err(arny_engine_api::EngineError::ContextOverflow { .. }) = &generation {
                eprintln!("(context full: starting a new conversation)");
                conversation = fresh();
                conversation.push(ChatMessage::user(line));
                generation =
                    Generation::new(model.as_ref(), session.as_mut(), request(&conversation)?);
            }
            let done = stream_to_stdout(generation?).await?;
            if args.stats {
                eprintln!(
                    "[{} prompt tokens: {} from cache, {} new | {} generated at {:.1} tok/s | {}]",
                    done.usage.prompt_tokens,
                    done.usage.cached_tokens,
                    done.usage.prefill_tokens,
                    done.usage.generated_tokens,
                    done.usage.decode_tok_s,
                    done.finish_reason.as_str()
                );
            }
            conversation.push(ChatMessage::assistant(done.text));
        }
        Ok(())
    })
}
