//! `arny info`: what a model file is.

use anyhow::Result;
use arny_engine_api::TemplateOrigin;

use crate::runtime::{ModelArgs, load};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let (model, path) = load(&args.model)?;
    let info = model.info();
    let template = model.chat_template();
    let origin = match template.map(|t| t.origin()) {
        None => "none: a completion model; chat needs --template".to_string(),
        Some(TemplateOrigin::Model) => "model".to_string(),
        Some(TemplateOrigin::Override) => "override".to_string(),
        Some(TemplateOrigin::Builtin(b)) => format!("built-in {}", b.name()),
    };
    let source = template.map(|t| t.source()).unwrap_or_default();
    if args.json {
        let mut v = serde_json::to_value(info)?;
        v["path"] = path.display().to_string().into();
        v["chat_template"] = match template {
            Some(_) => serde_json::json!({ "origin": origin, "source": source }),
            None => serde_json::Value::Null,
        };
        println!("{v}");
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("file           {}", path.display());
    println!("name           {}", info.name.as_deref().unwrap_or("-"));
    println!("architecture   {}", info.architecture);
    println!(
        "parameters     {} ({:.1} M)",
        info.parameters,
        info.parameters as f64 / 1e6
    );
    println!("quantization   {}", info.quantization);
    println!("vocabulary     {} tokens", info.vocab_size);
    println!(
        "context        {} tokens (trained for {})",
        info.context_length, info.trained_context_length
    );
    println!("file size      {:.1} MiB", mib(info.file_bytes));
    println!(
        "weights        {:.1} MiB resident",
        mib(info.resident_bytes)
    );
    println!("engine         {} on {}", info.engine, info.device);
    let c = info.capabilities;
    println!(
        "capabilities   logits={} lora={} grammar={} embeddings={}",
        c.logits, c.lora, c.grammar, c.embeddings
    );
    println!("chat template  ({origin})");
    for line in source.lines() {
        println!("  {line}");
    }
    Ok(())
}
