//! One weight precision on one backend against llama.cpp: agreement, KL,
//! resident bytes and decode speed.
//!
//! cargo run --release -p arny-engine-burn-wgpu --example precision -- gpu q8 [prompts]
use arny_conformance::compare::{CompareOptions, PROMPTS, compare};
use arny_engine_api::{
    DeviceRequest, GenerateRequest, InferenceEngine, LoadOptions, ModelSource, SessionOptions,
    generate,
};
use arny_engine_burn_wgpu::{BurnEngine, WeightPrecision};
use futures::executor::block_on;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let device = match args.first().map(String::as_str) {
        Some("gpu") => DeviceRequest::Gpu,
        _ => DeviceRequest::Cpu,
    };
    let precision = match args.get(1).map(String::as_str) {
        Some("f16") => WeightPrecision::F16,
        Some("q8") => WeightPrecision::Q8,
        _ => WeightPrecision::F32,
    };
    let prompts: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let path = arny_model_store::require_default_model().unwrap();
    let load = |e: &dyn InferenceEngine, device| {
        let opts = LoadOptions {
            device,
            ..Default::default()
        };
        block_on(e.load(ModelSource::Path(path.clone()), opts)).unwrap()
    };
    let reference = load(&arny_engine_gguf::GgufEngine::new(), DeviceRequest::Cpu);
    let burn = load(&BurnEngine::with_precision(precision), device);
    let mut s = block_on(burn.new_session(SessionOptions::default())).unwrap();
    let mut req = GenerateRequest::chat("What is 2+2?");
    req.max_tokens = 16;
    let done = block_on(generate(burn.as_ref(), s.as_mut(), req, |_| {})).unwrap();
    let opts = CompareOptions {
        prompts: PROMPTS[..prompts].iter().map(|s| s.to_string()).collect(),
        positions: 64,
        greedy_tokens: 8,
    };
    let r = block_on(compare(reference.as_ref(), burn.as_ref(), &opts)).unwrap();
    println!(
        "{}: resident {:.1} MiB, decode {:.1} tok/s, {:?}\n\
         {} prompts x 64: top-1 {:.4}, mean KL {:.5}, max KL {:.4}",
        burn.info().device,
        burn.info().resident_bytes as f64 / (1 << 20) as f64,
        done.usage.decode_tok_s,
        done.text,
        prompts,
        r.top1_agreement,
        r.mean_kl,
        r.max_kl
    );
}
