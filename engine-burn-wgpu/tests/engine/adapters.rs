//! The shipped math adapter on Burn's CPU backend: with f32 weights (the
//! float baseline PEFT computed in) it makes PEFT's choices; with the
//! default packed weights it agrees with llama.cpp running the same adapter
//! file as closely as the base models agree; an adapter only serves the
//! model that loaded it. The TCK covers the plumbing on both backends on
//! the tiny model.

use std::sync::Arc;

use arny_conformance::compare::{CompareOptions, PROMPTS, compare_adapted};
use arny_engine_api::{
    Adapter, DeviceRequest, InferenceEngine, LoadOptions, Model, ModelSource, SessionOptions,
};
use arny_engine_burn_wgpu::{BurnEngine, WeightPrecision};
use futures::executor::block_on;

fn burn_cpu() -> Arc<dyn Model> {
    load(BurnEngine::new())
}

fn burn_cpu_f32() -> Arc<dyn Model> {
    load(BurnEngine::with_precision(WeightPrecision::F32))
}

fn load(engine: BurnEngine) -> Arc<dyn Model> {
    let path = arny_conformance::reference_gguf();
    block_on(engine.load(
        ModelSource::Path(path),
        LoadOptions {
            device: DeviceRequest::Cpu,
            ..LoadOptions::default()
        },
    ))
    .unwrap()
}

fn math(model: &dyn Model) -> Arc<dyn Adapter> {
    let file = arny_model_store::locate_adapter(&arny_model_store::MATH_SMOLLM2_135M).unwrap();
    block_on(model.load_adapter(ModelSource::Path(file), 1.0)).unwrap()
}

#[test]
fn the_shipped_math_adapter_runs_as_peft_does() {
    let model = burn_cpu_f32();
    let adapter = math(model.as_ref());
    assert_eq!(adapter.info().rank, 16);
    let reference = arny_model_store::adapter_reference(&arny_model_store::MATH_SMOLLM2_135M);
    let r = block_on(arny_conformance::peft::agreement(
        model.as_ref(),
        adapter,
        reference.unwrap(),
    ))
    .unwrap();
    eprintln!("burn cpu against PEFT: {r:?}");
    // Burn computes in f32 from the same dequantized weights as PEFT did,
    // so it should make PEFT's choices nearly everywhere.
    assert!(r.changed >= 20, "{r:?}");
    assert!(r.base >= 0.97, "{r:?}");
    assert!(r.tuned >= 0.97, "{r:?}");
    assert!(r.follows >= 0.95, "{r:?}");
}

#[test]
fn with_an_adapter_burn_agrees_with_llama_cpp() {
    let path = arny_conformance::reference_gguf();
    let llama = block_on(
        arny_engine_gguf::GgufEngine::new().load(ModelSource::Path(path), LoadOptions::default()),
    )
    .unwrap();
    let burn = burn_cpu();
    let (a, b) = (math(llama.as_ref()), math(burn.as_ref()));
    let opts = CompareOptions {
        prompts: ["What is 30 + 43?", "What is 20% of 80?", PROMPTS[0]]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        positions: 24,
        greedy_tokens: 12,
    };
    let r = block_on(compare_adapted(
        (llama.as_ref(), Some(a)),
        (burn.as_ref(), Some(b.clone())),
        &opts,
    ))
    .unwrap();
    eprintln!(
        "burn vs llama.cpp with the math adapter: top-1 {:.3}, mean KL {:.4}, greedy identical {}/3",
        r.top1_agreement, r.mean_kl, r.greedy_identical
    );
    // The bar the base models meet (vs_llama_cpp.rs).
    assert!(r.top1_agreement >= 0.95, "{r:?}");
    assert!(r.mean_kl <= 0.02, "{r:?}");

    // Another engine's adapter, or another model's, is refused.
    let err = block_on(burn.new_session(SessionOptions {
        adapter: Some(math(llama.as_ref())),
        ..Default::default()
    }))
    .err()
    .expect("llama.cpp's adapter on burn");
    assert_eq!(err.code(), "incompatible", "{err}");
    let twin = burn_cpu();
    let err = block_on(twin.new_session(SessionOptions {
        adapter: Some(b),
        ..Default::default()
    }))
    .err()
    .expect("another model's adapter");
    assert_eq!(err.code(), "incompatible", "{err}");
}
