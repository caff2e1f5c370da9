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
use arny_sdk::{AskRequest, Assistant, AssistantOptions, EngineKind, Event, Manifest};
use serde::Serialize;

use crate::stats::Stats;

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
    // Greedy, so every rep does the same work whatever the defaults.
    req.sampling.temperature = Some(0.0);
    let t = Instant::now();
    a.ask(req, |_| {}).await?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

pub fn run(model_path: &Path, reps: usize, json: bool) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (hybrid, universal) = manifests(model_path, dir.path())?;
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(async {
        let options = || AssistantOptions {
            fetch_missing: false,
            ..AssistantOptions::default()
        };
        let a = Assistant::new(hybrid, options()).await?;
        let (cold_load, cold_first_token) = cold(&a, reps).await?;
        let warm_switch_first_token = alternate(&a, reps).await?;
        drop(a);
        let u = Assistant::new(universal, options()).await?;
        let role_switch_first_token = alternate(&u, reps).await?;
        anyhow::Ok(Report {
            model: model_path.display().to_string(),
            cold_load,
            cold_first_token,
            warm_switch_first_token,
            role_switch_first_token,
        })
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// A hybrid manifest with the two specialists on two files (hard links of
/// `model_path` in `dir`, so the plan holds two copies of the weights as it
/// would two fine-tuned models), and a universal one on one file.
fn manifests(model_path: &Path, dir: &Path) -> Result<(Manifest, Manifest)> {
    for name in ["a.gguf", "b.gguf"] {
        let dest = dir.join(name);
        if std::fs::hard_link(model_path, &dest).is_err() {
            std::fs::copy(model_path, &dest)
                .with_context(|| format!("copy the model to {}", dest.display()))?;
        }
    }
    let model = |id: &str| {
        format!(
            "[[models]]\nid = \"{id}\"\nengine = \"gguf\"\npath = \"{id}.gguf\"\ncontext_length = 1024\n\n"
        )
    };
    let head = |plan: &str| {
        format!("plan = \"{plan}\"\nidle_unload_secs = 3600\nmemory_budget = \"8 GiB\"\n\n")
    };
    let hybrid = format!(
        "{}{}{}{}",
        head("hybrid"),
        model("a"),
        model("b"),
        SPECIALISTS.replace("model = \"B\"", "model = \"b\"")
    );
    let universal = format!(
        "{}{}{}",
        head("universal"),
        model("a"),
        SPECIALISTS.replace("model = \"B\"", "model = \"a\"")
    );
    Ok((manifest(&hybrid, dir)?, manifest(&universal, dir)?))
}

/// Cold starts: the math specialist's model is unloaded before each ask.
/// Returns (load alone, request to first token).
async fn cold(a: &Assistant, reps: usize) -> Result<(Stats, Stats)> {
    let mut events = a.events();
    let (mut first_token, mut load) = (Vec::new(), Vec::new());
    for i in 0..reps {
        let q = QUESTIONS[(2 * i) % QUESTIONS.len()].1;
        first_token.push(ask(a, "math", q).await?);
        while let Ok(ev) = events.try_recv() {
            if let Event::Loaded { ms, .. } = ev {
                load.push(ms);
            }
        }
        let m = a
            .status()
            .memory
            .models
            .into_iter()
            .find(|m| m.specialists.iter().any(|s| s == "math"))
            .context("math model is loaded")?;
        a.manager().unload(&arny_sdk::ModelKey {
            engine: EngineKind::Gguf,
            path: m.path.into(),
        });
    }
    Ok((Stats::of(load), Stats::of(first_token)))
}

/// Both specialists warm, then asked in turn with fresh questions.
async fn alternate(a: &Assistant, reps: usize) -> Result<Stats> {
    ask(a, "math", "warm up").await?;
    ask(a, "wellness", "warm up").await?;
    let mut times = Vec::new();
    for i in 0..reps * 2 {
        let (who, q) = QUESTIONS[i % QUESTIONS.len()];
        times.push(ask(a, who, &format!("{q} ({i})")).await?);
    }
    Ok(Stats::of(times))
}

fn print_table(report: &Report) {
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
