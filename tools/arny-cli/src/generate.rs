//! `arny generate`: one prompt in, a streamed answer out.

use anyhow::{Context, Result, bail};
use arny_engine_api::{ChatMessage, Constraint, Generation, Prompt};

use crate::runtime::{
    AdapterArgs, ModelArgs, SamplingArgs, TemplateArgs, chat_prompt, load, read_prompt,
    stream_to_stdout,
};

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
    /// Send the prompt as raw text, without the chat template (what a
    /// model without a template gets anyway).
    #[arg(long, conflicts_with = "template")]
    raw: bool,
    #[command(flatten)]
    template: TemplateArgs,
    #[command(flatten)]
    constraint: ConstraintArgs,
    /// The prompt; `-` reads it from stdin.
    prompt: String,
}

pub fn run(args: Args) -> Result<()> {
    let text = read_prompt(&args.prompt)?;
    let (model, path) = load(&args.model)?;
    let template = args.template.source()?;
    let plain = args.raw || (template.is_none() && model.chat_template().is_none());
    let prompt = if plain {
        if !args.raw {
            // A base model: a chat format it never saw would make it answer
            // with that format's markers.
            eprintln!(
                "note: {} has no chat template: plain completion (--template NAME to chat)",
                path.display()
            );
        }
        if args.sampling.system.is_some() {
            bail!("--system needs a chat template; this prompt is plain text");
        }
        Prompt::Text(text)
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.sampling.system {
            messages.push(ChatMessage::system(system.clone()));
        }
        messages.push(ChatMessage::user(text));
        chat_prompt(model.as_ref(), template.as_deref(), messages)?
    };
    let mut request = args.sampling.request(prompt);
    request.constraint = args.constraint.constraint()?;
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
                "incomplete": done.incomplete,
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

/// What the output must match; at most one.
#[derive(clap::Args, Debug, Default)]
#[group(multiple = false)]
pub struct ConstraintArgs {
    /// The output is JSON valid under the JSON Schema in this file.
    #[arg(long, value_name = "FILE")]
    json_schema: Option<std::path::PathBuf>,
    /// The output is a JSON object.
    #[arg(long)]
    json_object: bool,
    /// The output matches this regular expression in full.
    #[arg(long, value_name = "REGEX")]
    regex: Option<String>,
    /// The output follows the Lark grammar in this file (llguidance's
    /// dialect: `start:` rule, `%json {...}` for embedded schemas).
    #[arg(long, value_name = "FILE")]
    grammar: Option<std::path::PathBuf>,
}

impl ConstraintArgs {
    pub fn constraint(&self) -> Result<Option<Constraint>> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        Ok(if let Some(p) = &self.json_schema {
            let schema = serde_json::from_str(&read(p)?)
                .with_context(|| format!("{} is not JSON", p.display()))?;
            Some(Constraint::JsonSchema(schema))
        } else if self.json_object {
            Some(Constraint::JsonObject)
        } else if let Some(r) = &self.regex {
            Some(Constraint::Regex(r.clone()))
        } else if let Some(p) = &self.grammar {
            Some(Constraint::Lark(read(p)?))
        } else {
            None
        })
    }
}
