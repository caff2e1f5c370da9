//! `arny eval`: task accuracy of a model (with or without an adapter) on a
//! JSONL of examples, answered greedily on any engine.
//!
//! The examples are `arny tune`'s format; each needs an `"answer"`. A reply
//! is right when its last number equals a numeric answer, or, for any other
//! answer, when it contains it (case-insensitive): the rule `tune.py`
//! scores held-out examples with, so the two figures compare.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use arny_engine_api::{ChatMessage, GenerateRequest, Prompt, Role, SamplingParams, generate};
use indicatif::{ProgressBar, ProgressStyle};

use crate::runtime::{AdapterArgs, ModelArgs, load};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    adapter: AdapterArgs,
    /// Examples: {"messages": [...], "answer": "16"} per line; the last
    /// message (the reference reply) is dropped and the rest is the prompt.
    #[arg(long)]
    data: PathBuf,
    /// Replace each example's system message with this one ("" drops it).
    #[arg(long)]
    system: Option<String>,
    /// Score only the first N examples.
    #[arg(long)]
    limit: Option<usize>,
    /// Tokens per answer.
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// Print every example's reply and verdict as JSON lines.
    #[arg(long)]
    json: bool,
}

struct Example {
    messages: Vec<ChatMessage>,
    answer: String,
}

fn read(args: &Args) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(&args.data)
        .with_context(|| format!("reading {}", args.data.display()))?;
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = || format!("{}:{}", args.data.display(), n + 1);
        let row: serde_json::Value = serde_json::from_str(line).with_context(at)?;
        let answer = match row.get("answer") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v @ serde_json::Value::Number(_)) => v.to_string(),
            _ => bail!("invalid input: {}: needs an \"answer\"", at()),
        };
        let mut messages: Vec<ChatMessage> = if let Some(m) = row.get("messages") {
            serde_json::from_value(m.clone()).with_context(at)?
        } else if let Some(p) = row.get("prompt").and_then(|p| p.as_str()) {
            vec![ChatMessage::user(p), ChatMessage::assistant("")]
        } else {
            bail!("invalid input: {}: needs `messages` or `prompt`", at());
        };
        if messages.last().is_some_and(|m| m.role == Role::Assistant) {
            messages.pop();
        }
        if let Some(system) = &args.system {
            messages.retain(|m| m.role != Role::System);
            if !system.is_empty() {
                messages.insert(0, ChatMessage::system(system.clone()));
            }
        }
        if !messages.iter().any(|m| m.role == Role::User) {
            bail!("invalid input: {}: no user message", at());
        }
        out.push(Example { messages, answer });
    }
    if let Some(limit) = args.limit {
        out.truncate(limit);
    }
    if out.is_empty() {
        bail!("invalid input: {} has no examples", args.data.display());
    }
    Ok(out)
}

/// The last number in `text` ("1,250" and "-3.5" included).
fn last_number(text: &str) -> Option<f64> {
    let bytes = text.as_bytes();
    let mut found = None;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = if i > 0 && bytes[i - 1] == b'-' {
                i - 1
            } else {
                i
            };
            let mut end = i;
            while end < bytes.len()
                && (bytes[end].is_ascii_digit()
                    || (matches!(bytes[end], b',' | b'.')
                        && bytes.get(end + 1).is_some_and(u8::is_ascii_digit)))
            {
                end += 1;
            }
            found = text[start..end]
                .replace(',', "")
                .parse::<f64>()
                .ok()
                .or(found);
            i = end;
        } else {
            i += 1;
        }
    }
    found
}

/// `tune.py`'s rule (see the module comment).
pub fn is_correct(reply: &str, answer: &str) -> bool {
    match answer.replace(',', "").trim().parse::<f64>() {
        Ok(want) => {
            last_number(reply).is_some_and(|got| (got - want).abs() <= 1e-6 * want.abs().max(1.0))
        }
        Err(_) => reply.to_lowercase().contains(&answer.trim().to_lowercase()),
    }
}

pub fn run(args: Args) -> Result<()> {
    let examples = read(&args)?;
    let (model, _) = load(&args.model)?;
    let options = args.adapter.session_options(&model)?;
    let bar = ProgressBar::new(examples.len() as u64).with_style(
        ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut right = 0usize;
    futures::executor::block_on(async {
        let mut session = model.new_session(options).await?;
        for (k, ex) in examples.iter().enumerate() {
            let mut req = GenerateRequest::new(Prompt::Chat(ex.messages.clone()));
            req.sampling = SamplingParams::greedy();
            req.max_tokens = args.max_tokens;
            let done = generate(model.as_ref(), session.as_mut(), req, |_| {}).await?;
            let ok = is_correct(&done.text, &ex.answer);
            right += usize::from(ok);
            if args.json {
                let question = ex.messages.last().map(|m| m.content.as_str()).unwrap_or("");
                bar.suspend(|| {
                    println!(
                        "{}",
                        serde_json::json!({"question": question, "answer": ex.answer, "reply": done.text, "correct": ok})
                    )
                });
            }
            bar.inc(1);
            bar.set_message(format!(
                "{:.1} % right",
                100.0 * right as f64 / (k + 1) as f64
            ));
        }
        Ok::<_, anyhow::Error>(())
    })?;
    bar.finish_and_clear();
    let pct = 100.0 * right as f64 / examples.len() as f64;
    eprintln!("{right}/{} right ({pct:.1} %)", examples.len());
    if !args.json {
        println!("{pct:.1}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_number_decides() {
        assert!(is_correct(
            "20% of 80 = 80 × 20 / 100 = 16. The answer is 16.",
            "16"
        ));
        assert!(!is_correct("The answer is 16, or maybe 17", "16"));
        assert!(is_correct("That costs $1,250.", "1250"));
        assert!(is_correct("x = -3.5", "-3.5"));
        assert!(!is_correct("no number here", "4"));
        assert!(is_correct("It is Paris.", "paris"));
        assert_eq!(last_number("2.5 kg and 3."), Some(3.0));
    }
}
