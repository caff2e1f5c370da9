//! `arny bench --switch`: what changing specialists costs.
//!
//! - cold: the specialist's model is not loaded (load + first token);
//! - warm switch (hybrid plan): two specialists on two resident model
//!   copies, asked alternately;
//! - role switch (universal plan): one model, two roles asked alternately.
//!
//! Every number is the wall time of a request up to its first token
//! (`max_tokens = 1`), measured through the SDK exactly as an app calls it,
//! with a fresh question each time so only the system prompt can come from
//! the KV cache.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use arny_sdk::{AskRequest, Assistant, AssistantOptions, Event, Manifest};
use serde::Serialize;

use crate::bench::Stats;

const QUESTIONS: &[(&str, &str)] = &[
    ("math", "What is 12 times 7?"),
    ("wellness", "I feel stressed about my job interview."),
    ("math", "Solve 3x + 4 = 19."),
    ("wellness", "How can I sleep better when I'm worried?"),
    ("math", "What is 15% of 240?"),
    ("wellness", "I feel lonely after moving to a new city."),
    ("math", "Convert 5 miles to kilometers."),
    ("wellness", "How do I calm down before an exam?"),
];

#[derive(Serialize)]
struct Report {
    model: String,
    // All times in milliseconds.
    /// Model load alone (engine load, from the manager's event).
    cold_load: Stats,
    /// Request to first token when the specialist's model is not loaded.
    cold_first_token: Stats,
    /// Request to first token, hybrid plan, switching between two resident models.
    warm_switch_first_token: Stats,
    /// Request to first token, universal plan, switching roles on one model.
    role_switch_first_token: Stats,
}

fn manifest(text: &str, dir: &Path) -> Result<Manifest> {
    Ok(Manifest::parse(text, "<bench manifest>", dir)?)
}

const SPECIALISTS: &str = r#"
[gateway]
cloud_examples = []

[[specialists]]
name = "math"
model = "a"
system_prompt = "You are a precise mathematics tutor. Solve problems step by step and check the result."
examples = ["what is 2 + 2", "solve x + 1 = 3"]

[[specialists]]
name = "wellness"
model = "B"
system_prompt = "You are an empathetic wellness counselor. Give supportive, non-judgmental advice."
examples = ["I feel sad", "how do I handle stress"]
"#;

async fn ask(a: &Assistant, specialist: &str, q: &str) -> Result<f64> {
    let mut req = AskRequest::new(q);
    req.specialist = Some(specialist.to_string());
    req.max_tokens = Some(1);
    let t = Instant::now();
    a.ask(req, |_| {}).await?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

pub fn run(model_path: &Path, reps: usize, json: bool) -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Two files, so the hybrid plan holds two copies of the weights as it
    // would two fine-tuned specialists. Hard links cost no disk.
    for name in ["a.gguf", "b.gguf"] {
        let dest = dir.path().join(name);
        if std::fs::hard_link(model_path, &dest).is_err() {
            std::fs::copy(model_path, &dest)
                .with_context(|| format!("copy the model to {}", dest.display()))?;
        }
    }
    let models = |b_file: &str| {
        format!(
            "plan = \"{plan}\"\nidle_unload_secs = 3600\nmemory_budget = \"8 GiB\"\n\n[[models]]\nid = \"a\"\nengine = \"gguf\"\npath = \"a.gguf\"\ncontext_length = 1024\n\n{b}{SPECIALISTS}",
            plan = if b_file.is_empty() {
                "universal"
            } else {
                "hybrid"
            },
            b = if b_file.is_empty() {
                String::new()
            } else {
                format!(
                    "[[models]]\nid = \"b\"\nengine = \"gguf\"\npath = \"{b_file}\"\ncontext_length = 1024\n\n"
                )
            },
        )
    };
    let hybrid = manifest(
        &models("b.gguf").replace("model = \"B\"", "model = \"b\""),
        dir.path(),
    )?;
    let universal = manifest(
        &models("").replace("model = \"B\"", "model = \"a\""),
        dir.path(),
    )?;
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(async {
        let options = || AssistantOptions {
            fetch_missing: false,
            ..AssistantOptions::default()
        };
        // Cold: unload, then ask.
        let a = Assistant::new(hybrid, options()).await?;
        let mut events = a.events();
        let (mut cold, mut load) = (Vec::new(), Vec::new());
        let key = |name: &str| {
            a.status()
                .memory
                .models
                .iter()
                .find(|m| m.specialists.contains(&name.to_string()))
                .cloned()
        };
        for i in 0..reps {
            let q = QUESTIONS[(2 * i) % QUESTIONS.len()].1;
            cold.push(ask(&a, "math", q).await?);
            while let Ok(ev) = events.try_recv() {
                if let Event::Loaded { ms, .. } = ev {
                    load.push(ms);
                }
            }
            let m = key("math").context("math model is loaded")?;
            let k = arny_sdk::ModelKey {
                engine: arny_sdk::manifest::EngineKind::Gguf,
                path: m.path.into(),
            };
            a.manager().unload(&k);
        }
        // Warm switch: both loaded, alternate.
        ask(&a, "math", "warm up").await?;
        ask(&a, "wellness", "warm up").await?;
        let mut warm = Vec::new();
        for i in 0..reps * 2 {
            let (who, q) = QUESTIONS[i % QUESTIONS.len()];
            warm.push(ask(&a, who, &format!("{q} ({i})")).await?);
        }
        drop(a);
        // Role switch on one model.
        let u = Assistant::new(universal, options()).await?;
        ask(&u, "math", "warm up").await?;
        ask(&u, "wellness", "warm up").await?;
        let mut role = Vec::new();
        for i in 0..reps * 2 {
            let (who, q) = QUESTIONS[i % QUESTIONS.len()];
            role.push(ask(&u, who, &format!("{q} ({i})")).await?);
        }
        anyhow::Ok(Report {
            model: model_path.display().to_string(),
            cold_load: Stats::of(load),
            cold_first_token: Stats::of(cold),
            warm_switch_first_token: Stats::of(warm),
            role_switch_first_token: Stats::of(role),
        })
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("model: {}", report.model);
        println!(
            "{:<34} {:>10} {:>10} {:>10} {:>4}",
            "", "median ms", "min", "max", "n"
        );
        for (name, s) in [
            ("cold load (model only)", &report.cold_load),
            ("cold specialist, first token", &report.cold_first_token),
            (
                "warm switch (hybrid), first token",
                &report.warm_switch_first_token,
            ),
            (
                "role switch (universal), 1st token",
                &report.role_switch_first_token,
            ),
        ] {
            println!(
                "{name:<34} {:>10.1} {:>10.1} {:>10.1} {:>4}",
                s.median,
                s.min,
                s.max,
                s.samples.len()
            );
        }
    }
    Ok(())
}
