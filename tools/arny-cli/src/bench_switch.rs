//! `arny bench --switch`: what changing specialists costs.
//!
//! - cold: the specialist's model is not loaded (load + first token);
//! - warm switch (hybrid plan): two specialists on two resident model
//!   copies, asked alternately;
//! - role switch (universal plan): one model, two roles asked alternately;
//! - LoRA switch: one resident model, two specialists that are LoRA
//!   adapters over it, asked alternately; and what loading an adapter
//!   costs on its own.
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
    /// Request to first token, one model, switching between two LoRA
    /// specialists (the shipped math adapter under two names: the cost of
    /// a switch does not depend on what the adapter learned).
    lora_switch_first_token: Stats,
    /// `Model::load_adapter` of the math adapter (file to usable), alone.
    adapter_load: Stats,
    /// Resident bytes by the manager's accounting: the model with its two
    /// plain-prompt sessions (universal plan), and with the two LoRA
    /// specialists' sessions and adapters.
    resident_bytes_universal: u64,
    resident_bytes_lora: u64,
    adapter_bytes: u64,
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
        let resident_bytes_universal = u.status().memory.resident_bytes;
        drop(u);
        let l = Assistant::new(lora_manifest(model_path, dir.path())?, options()).await?;
        let lora_switch_first_token = alternate(&l, reps).await?;
        let resident_bytes_lora = l.status().memory.resident_bytes;
        drop(l);
        let (adapter_load, adapter_bytes) = adapter_loads(model_path, reps).await?;
        anyhow::Ok(Report {
            model: model_path.display().to_string(),
            cold_load,
            cold_first_token,
            warm_switch_first_token,
            role_switch_first_token,
            lora_switch_first_token,
            adapter_load,
            resident_bytes_universal,
            resident_bytes_lora,
            adapter_bytes,
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

/// One model (`a`) and both specialists as LoRA adapters over it: two
/// copies of the shipped math adapter, so the plan holds two adapters as
/// it would two tuned specialists.
fn lora_manifest(model_path: &Path, dir: &Path) -> Result<Manifest> {
    let adapter = arny_model_store::locate_adapter(&arny_model_store::MATH_SMOLLM2_135M)?;
    for name in ["math.lora.gguf", "wellness.lora.gguf"] {
        std::fs::copy(&adapter, dir.join(name))
            .with_context(|| format!("copy the adapter to {name}"))?;
    }
    let a = dir.join("a.gguf");
    if !a.is_file() {
        std::fs::copy(model_path, &a)?;
    }
    let specialists = SPECIALISTS
        .replace("model = \"B\"", "model = \"a\"")
        .replace(
            "examples = [\"what is 2 + 2\"",
            "adapter = { path = \"math.lora.gguf\" }\nexamples = [\"what is 2 + 2\"",
        )
        .replace(
            "examples = [\"I feel sad\"",
            "adapter = { path = \"wellness.lora.gguf\" }\nexamples = [\"I feel sad\"",
        );
    let text = format!(
        "plan = \"hybrid\"\nidle_unload_secs = 3600\nmemory_budget = \"8 GiB\"\n\n\
         [[models]]\nid = \"a\"\nengine = \"gguf\"\npath = \"a.gguf\"\ncontext_length = 1024\n\n{specialists}"
    );
    manifest(&text, dir)
}

/// `reps` loads of the math adapter into one loaded model, each timed from
/// the file to a usable adapter. Returns the times and the adapter's bytes.
async fn adapter_loads(model_path: &Path, reps: usize) -> Result<(Stats, u64)> {
    use arny_engine_api::{InferenceEngine, LoadOptions, ModelSource};
    let adapter = arny_model_store::locate_adapter(&arny_model_store::MATH_SMOLLM2_135M)?;
    let model = arny_engine_gguf::GgufEngine::new()
        .load(
            ModelSource::Path(model_path.to_path_buf()),
            LoadOptions::default(),
        )
        .await?;
    let (mut times, mut bytes) = (Vec::new(), 0);
    for _ in 0..reps {
        let t = Instant::now();
        let a = model
            .load_adapter(ModelSource::Path(adapter.clone()), 1.0)
            .await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        bytes = a.info().resident_bytes;
    }
    Ok((Stats::of(times), bytes))
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
        (
            "LoRA switch (one model), 1st token",
            &report.lora_switch_first_token,
        ),
        ("adapter load (alone)", &report.adapter_load),
    ] {
        println!(
            "{name:<34} {:>10.1} {:>10.1} {:>10.1} {:>4}",
            s.median,
            s.min,
            s.max,
            s.samples.len()
        );
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "resident: one model, two plain roles {:.1} MiB; one model, two LoRA specialists {:.1} MiB (adapter {:.1} MiB)",
        mib(report.resident_bytes_universal),
        mib(report.resident_bytes_lora),
        mib(report.adapter_bytes)
    );
}
