//! `arny route`: the gateway alone, JSON lines in, JSON lines out.

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::assistant::ConfigArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Override the manifest's confidence threshold.
    #[arg(long)]
    threshold: Option<f32>,
    /// Write the manifest's example utterances as training data for a
    /// gateway adapter (JSONL for `arny tune`: the model strategy's prompt,
    /// the utterance, its label) to this file, and route nothing.
    #[arg(long, value_name = "FILE")]
    tune_data: Option<std::path::PathBuf>,
}

#[derive(Deserialize)]
struct Line {
    text: String,
    /// When present, a summary (accuracy, cloud share) goes to stderr.
    label: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let mut manifest = args.config.manifest()?;
    if let Some(path) = &args.tune_data {
        let rows = arny_sdk::gateway_training_data(&manifest);
        let mut text = String::new();
        for r in &rows {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("{} examples written to {}", rows.len(), path.display());
        return Ok(());
    }
    if let Some(t) = args.threshold {
        anyhow::ensure!((0.0..=1.0).contains(&t), "--threshold {t} is not in [0, 1]");
        manifest.gateway.threshold = t;
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let assistant = crate::assistant::build(manifest).await?;
        let stdin = std::io::stdin().lock();
        let mut out = std::io::stdout().lock();
        let (mut n, mut labelled, mut correct, mut cloud) = (0usize, 0usize, 0usize, 0usize);
        let mut times = Vec::new();
        for (i, line) in stdin.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let input: Line = serde_json::from_str(&line).with_context(|| format!("stdin line {}: expected {{\"text\": ...}}", i + 1))?;
            let d = assistant.route(&input.text).await?;
            n += 1;
            times.push(d.ms);
            cloud += (d.label == arny_sdk::CLOUD) as usize;
            if let Some(want) = &input.label {
                labelled += 1;
                correct += (*want == d.label) as usize;
            }
            let v = serde_json::json!({
                "text": input.text, "label": d.label, "confidence": d.confidence, "ms": d.ms,
                "top": d.top, "strategy": d.strategy,
            });
            writeln!(out, "{v}")?;
        }
        out.flush()?;
        if n > 0 {
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            let acc = if labelled > 0 { format!("accuracy {:.3} ({correct}/{labelled}), ", correct as f64 / labelled as f64) } else { String::new() };
            eprintln!(
                "{n} decisions: {acc}cloud share {:.3}, median {median:.3} ms per decision, threshold {}",
                cloud as f64 / n as f64,
                assistant.manifest().gateway.threshold
            );
        }
        Ok(())
    })
}
