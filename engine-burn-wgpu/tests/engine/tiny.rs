//! The Burn model on the generated tiny model (random weights, 4 query
//! heads sharing 2 KV heads): the KV cache gives what one full pass gives,
//! and llama.cpp computes the same distributions. Seconds, where the real
//! model takes minutes on a software GPU.

use arny_conformance::compare::kl_divergence;
use arny_engine_api::{
    DeviceRequest, InferenceEngine, LoadOptions, Logits, LogitsRequest, Model, ModelSource,
    SessionOptions, TokenId, sampler::argmax,
};
use futures::executor::block_on;

fn load(engine: &dyn InferenceEngine, device: DeviceRequest) -> std::sync::Arc<dyn Model> {
    let path = arny_conformance::tiny_gguf();
    block_on(engine.load(
        ModelSource::Path(path),
        LoadOptions {
            device,
            ..LoadOptions::default()
        },
    ))
    .unwrap()
}

fn tokens(m: &dyn Model) -> Vec<TokenId> {
    m.tokenize(
        "The quick brown fox jumps over the lazy dog, and the cat sleeps in the warm sun.",
        false,
        false,
    )
    .unwrap()
}

fn all_rows(m: &dyn Model, toks: &[TokenId]) -> Logits {
    let mut s = block_on(m.new_session(SessionOptions::default())).unwrap();
    block_on(s.eval(toks, LogitsRequest::All)).unwrap()
}

fn step_by_step_equals_one_pass(device: DeviceRequest) {
    let m = load(&arny_engine_burn_wgpu::BurnEngine::new(), device);
    let toks = tokens(m.as_ref());
    assert!(toks.len() > 16);
    let whole = all_rows(m.as_ref(), &toks);
    let mut s = block_on(m.new_session(SessionOptions::default())).unwrap();
    for (i, &t) in toks.iter().enumerate() {
        let step = block_on(s.eval(&[t], LogitsRequest::Last)).unwrap();
        let (a, b) = (whole.row(i), step.last());
        assert_eq!(argmax(a), argmax(b), "position {i}");
        let kl = kl_divergence(a, b);
        assert!(kl < 1e-4, "position {i}: KL {kl}");
    }
    assert_eq!(s.tokens(), toks.as_slice());
}

#[test]
fn cpu_decode_with_the_cache_equals_one_full_pass() {
    step_by_step_equals_one_pass(DeviceRequest::Cpu);
}

#[test]
fn wgpu_decode_with_the_cache_equals_one_full_pass() {
    step_by_step_equals_one_pass(DeviceRequest::Gpu);
}

#[test]
fn burn_and_llama_cpp_agree_on_the_tiny_model() {
    let reference = load(&arny_engine_gguf::GgufEngine::new(), DeviceRequest::Cpu);
    let toks = tokens(reference.as_ref());
    let want = all_rows(reference.as_ref(), &toks);
    for device in [DeviceRequest::Cpu, DeviceRequest::Gpu] {
        let m = load(&arny_engine_burn_wgpu::BurnEngine::new(), device);
        let got = all_rows(m.as_ref(), &toks);
        let mut agree = 0;
        for i in 0..toks.len() {
            agree += usize::from(argmax(want.row(i)) == argmax(got.row(i)));
            // The same f32 arithmetic on the CPU; on wgpu, f16 weights where
            // the adapter has shader f16: close, not equal.
            let kl = kl_divergence(want.row(i), got.row(i));
            assert!(kl < 0.02, "{device:?} position {i}: KL {kl}");
        }
        assert!(
            agree * 10 >= toks.len() * 9,
            "{device:?}: top-1 {agree}/{}",
            toks.len()
        );
    }
}

/// The packed kernels against llama.cpp on the same blocks: a tiny model
/// stored in Q4_1 and in Q8_0, run by the CPU backend's default (packed)
/// weights (and, printed beside it, by f32 weights dequantized from the
/// same blocks). Both engines quantize activations to 8 bits the same way
/// (the kernels' own tests check that arithmetic exactly); what is left is
/// llama.cpp's f16 KV cache and attention, which this engine keeps in f32.
/// Measured: Q4_1 packed top-1 32/34, mean KL 1.5e-3 (f32 weights 34/34,
/// 2.9e-3); Q8_0 packed 33/34, 1.8e-3 (f32 33/34, 1.4e-3).
#[test]
fn packed_weights_compute_what_llama_cpp_computes() {
    use arny_conformance::{Storage, TinyModel};
    use arny_engine_burn_wgpu::{BurnEngine, WeightPrecision};
    for storage in [Storage::Q4_1, Storage::Q8_0] {
        let path = TinyModel {
            storage,
            ..TinyModel::default()
        }
        .file()
        .unwrap();
        let load = |engine: &dyn InferenceEngine| {
            block_on(engine.load(
                ModelSource::Path(path.clone()),
                LoadOptions {
                    device: DeviceRequest::Cpu,
                    ..LoadOptions::default()
                },
            ))
            .unwrap()
        };
        let reference = load(&arny_engine_gguf::GgufEngine::new());
        let packed = load(&BurnEngine::new());
        let dense = load(&BurnEngine::with_precision(WeightPrecision::F32));
        assert!(
            packed.info().device.contains("packed"),
            "{}",
            packed.info().device
        );
        let toks = tokens(reference.as_ref());
        let want = all_rows(reference.as_ref(), &toks);
        let score = |m: &dyn Model| {
            let got = all_rows(m, &toks);
            let (mut agree, mut kl) = (0, 0f64);
            for i in 0..toks.len() {
                agree += usize::from(argmax(want.row(i)) == argmax(got.row(i)));
                kl += kl_divergence(want.row(i), got.row(i));
            }
            (agree, kl / toks.len() as f64)
        };
        let (p, d) = (score(packed.as_ref()), score(dense.as_ref()));
        eprintln!(
            "{storage:?}: packed top-1 {}/{n} mean KL {:.2e}; f32 {}/{n} mean KL {:.2e}",
            p.0,
            p.1,
            d.0,
            d.1,
            n = toks.len()
        );
        assert!(
            p.0 * 10 >= toks.len() * 9,
            "{storage:?}: top-1 packed {p:?} f32 {d:?}"
        );
        assert!(p.1 < 5e-3, "{storage:?}: mean KL packed {p:?} f32 {d:?}");
    }
}
