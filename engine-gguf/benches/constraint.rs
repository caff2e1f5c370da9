//! What constrained decoding costs on the default model (SmolLM2-135M,
//! 49,152 tokens): the time to compute one token mask, replayed over real
//! constrained generations, and decode speed with a JSON Schema against
//! without, alternating rep by rep on one session.
//!
//! `cargo bench -p arny-engine-gguf --bench constraint`. Besides
//! criterion's own report it prints per-mask percentiles and the decode
//! ratio, which criterion cannot express.

use std::time::{Duration, Instant};

use arny_engine_api::{
    Constraint, ConstraintState, GenerateRequest, LoadOptions, Model, SamplingParams,
    SessionOptions, generate,
};
use arny_engine_gguf::GgufEngine;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

fn schemas() -> Vec<(&'static str, Constraint, &'static str)> {
    vec![
        (
            "weather_call",
            Constraint::JsonSchema(json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 30},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7}
                },
                "required": ["city", "unit", "days"],
                "additionalProperties": false
            })),
            "Weather request for Paris in celsius for 3 days, as JSON.",
        ),
        (
            "order",
            Constraint::JsonSchema(json!({
                "type": "object",
                "properties": {
                    "id": {"type": "string", "pattern": "^ORD-[0-9]{6}$"},
                    "items": {"type": "array", "maxItems": 3, "items": {
                        "type": "object",
                        "properties": {"sku": {"type": "string", "maxLength": 12}, "qty": {"type": "integer", "minimum": 1}},
                        "required": ["sku", "qty"], "additionalProperties": false}},
                    "express": {"type": "boolean"}
                },
                "required": ["id", "items", "express"],
                "additionalProperties": false
            })),
            "An order with two items as JSON.",
        ),
        (
            // Inside a long string nearly every token is allowed: the
            // largest masks.
            "long_string",
            Constraint::JsonSchema(json!({
                "type": "object",
                "properties": {"story": {"type": "string", "minLength": 2000}},
                "required": ["story"]
            })),
            "Tell me a long story about a dragon, as JSON.",
        ),
    ]
}

fn request(prompt: &str, constraint: Option<Constraint>, n: u32) -> GenerateRequest {
    GenerateRequest {
        sampling: SamplingParams::greedy(),
        max_tokens: n,
        constraint,
        ..GenerateRequest::chat(prompt)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let path = arny_model_store::require_default_model().expect("the default model");
    let model = GgufEngine::new()
        .load_path(&path, &LoadOptions::default())
        .expect("load");
    let model: &dyn Model = &model;
    let mut session =
        futures::executor::block_on(model.new_session(SessionOptions::default())).expect("session");

    let t0 = Instant::now();
    let first = ConstraintState::new(model, &schemas()[0].1).unwrap();
    let cold = t0.elapsed();
    drop(first);
    let t0 = Instant::now();
    let _warm = ConstraintState::new(model, &schemas()[0].1).unwrap();
    println!(
        "constraint compile: first on this vocabulary {:.1} ms (builds the token trie), later {:.2} ms",
        cold.as_secs_f64() * 1e3,
        t0.elapsed().as_secs_f64() * 1e3
    );

    // Masks, replayed over the tokens each constrained generation chose.
    let mut all = Vec::new();
    for (name, constraint, prompt) in schemas() {
        let done = futures::executor::block_on(generate(
            model,
            session.as_mut(),
            request(prompt, Some(constraint.clone()), 96),
            |_| {},
        ))
        .unwrap();
        let mut times = Vec::new();
        for _ in 0..20 {
            let mut state = ConstraintState::new(model, &constraint).unwrap();
            for &t in &done.tokens {
                let t0 = Instant::now();
                let mask = state.mask().unwrap();
                times.push(t0.elapsed());
                assert!(mask.allows(t));
                state.consume(t).unwrap();
            }
        }
        times.sort();
        println!(
            "mask {name}: {} steps x 20, p50 {:.1} us, p99 {:.1} us, max {:.1} us",
            done.tokens.len(),
            percentile(&times, 0.5).as_secs_f64() * 1e6,
            percentile(&times, 0.99).as_secs_f64() * 1e6,
            times.last().unwrap().as_secs_f64() * 1e6
        );
        all.extend(times);
        c.bench_function(&format!("constraint/replay_{name}"), |b| {
            b.iter(|| {
                let mut state = ConstraintState::new(model, &constraint).unwrap();
                for &t in &done.tokens {
                    state.mask().unwrap();
                    state.consume(t).unwrap();
                }
            })
        });
    }
    all.sort();
    println!(
        "mask, all schemas: {} masks, p50 {:.1} us, p99 {:.1} us",
        all.len(),
        percentile(&all, 0.5).as_secs_f64() * 1e6,
        percentile(&all, 0.99).as_secs_f64() * 1e6
    );

    // Decode speed, constrained against plain, same prompt and length,
    // alternating so that load on the machine hits both alike.
    for (name, constraint, prompt) in schemas() {
        let (mut plain, mut held) = (Vec::new(), Vec::new());
        let n = 64;
        for _ in 0..5 {
            let h = futures::executor::block_on(generate(
                model,
                session.as_mut(),
                request(prompt, Some(constraint.clone()), n),
                |_| {},
            ))
            .unwrap();
            // The plain run goes exactly as long as the constrained one.
            let mut req = request(prompt, None, h.usage.generated_tokens.max(2) as u32);
            req.ignore_eos = true;
            let p = futures::executor::block_on(generate(model, session.as_mut(), req, |_| {}))
                .unwrap();
            held.push(h.usage.decode_tok_s);
            plain.push(p.usage.decode_tok_s);
        }
        let (p, h) = (median(plain), median(held));
        println!(
            "decode {name}: plain {p:.1} tok/s, constrained {h:.1} tok/s, ratio {:.3}",
            h / p
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
