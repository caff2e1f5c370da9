//! Greedy "What is 2+2?" on Burn's CPU backend, next to llama.cpp.
use arny_engine_api::{
    DeviceRequest, GenerateRequest, InferenceEngine, LoadOptions, ModelSource, SessionOptions,
    generate,
};

fn main() {
    let path = arny_model_store::require_default_model().unwrap();
    for (engine, opts) in [
        (
            Box::new(arny_engine_burn_wgpu::BurnEngine::new()) as Box<dyn InferenceEngine>,
            LoadOptions {
                device: DeviceRequest::Cpu,
                ..Default::default()
            },
        ),
        (
            Box::new(arny_engine_gguf::GgufEngine::new()),
            LoadOptions::default(),
        ),
    ] {
        let t = std::time::Instant::now();
        let m = futures::executor::block_on(engine.load(ModelSource::Path(path.clone()), opts))
            .unwrap();
        let load = t.elapsed();
        let mut s = futures::executor::block_on(m.new_session(SessionOptions::default())).unwrap();
        let mut req = GenerateRequest::chat("What is 2+2?");
        req.max_tokens = 16;
        let done =
            futures::executor::block_on(generate(m.as_ref(), s.as_mut(), req, |_| {})).unwrap();
        println!(
            "{}: load {load:?} prefill {:.1} tok/s decode {:.1} tok/s\n  {:?}\n  {:?}",
            engine.id(),
            done.usage.prefill_tok_s,
            done.usage.decode_tok_s,
            done.text,
            done.tokens
        );
    }
}
