//! `arny ask`: the whole path — gateway, specialist (or cloud), streamed answer.

use std::io::Write;

use anyhow::Result;
use arny_sdk::AskRequest;

use crate::assistant::ConfigArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Skip the gateway and ask this specialist.
    #[arg(long)]
    specialist: Option<String>,
    /// Upper bound on generated tokens (default: the specialist's, 256).
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Print a JSON summary (handler, decision, usage) on stderr at the end.
    #[arg(long)]
    json: bool,
    /// The question; `-` reads standard input.
    prompt: String,
}

pub fn run(args: Args) -> Result<()> {
    let prompt = crate::runtime::read_prompt(&args.prompt)?;
    let manifest = args.config.manifest()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let assistant = crate::assistant::build(manifest).await?;
        crate::assistant::show_events(&assistant);
        let mut req = AskRequest::new(prompt.clone());
        req.specialist = args.specialist.clone();
        req.max_tokens = args.max_tokens;
        if req.specialist.is_none() {
            // Routed here so the decision shows before the answer starts;
            // `ask` takes it and does not route again.
            let d = assistant.route(&prompt).await?;
            let note = if d.below_threshold {
                format!(
                    " (under the {} threshold)",
                    assistant.manifest().gateway.threshold
                )
            } else {
                String::new()
            };
            eprintln!(
                "→ {} ({:.2} {}, {:.2} ms){note}",
                d.label, d.confidence, d.strategy, d.ms
            );
            req.decision = Some(d);
        }
        let answer = assistant
            .ask(req, |piece| {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
            })
            .await?;
        let _ = writeln!(std::io::stdout());
        eprintln!(
            "[answered by {}; {}]",
            answer.handler.describe(),
            answer.finish_reason.as_str()
        );
        if args.json {
            eprintln!("{}", serde_json::to_string(&answer)?);
        }
        Ok(())
    })
}
