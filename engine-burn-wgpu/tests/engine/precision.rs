//! Weights kept as 8-bit blocks (`WeightPrecision::Q8`, opt-in): the model
//! still answers, and takes under 40% of the f32 engine's memory.

use arny_engine_api::{
    DeviceRequest, GenerateRequest, InferenceEngine, LoadOptions, ModelSource, SessionOptions,
    generate,
};
use arny_engine_burn_wgpu::{BurnEngine, WeightPrecision};
use futures::executor::block_on;

#[test]
fn q8_weights_answer_in_less_memory() {
    let path =
        arny_model_store::require_default_model().expect("the default model; run scripts/setup.sh");
    let load = |p| {
        let opts = LoadOptions {
            device: DeviceRequest::Cpu,
            ..LoadOptions::default()
        };
        block_on(BurnEngine::with_precision(p).load(ModelSource::Path(path.clone()), opts)).unwrap()
    };
    let (f32m, q8) = (load(WeightPrecision::F32), load(WeightPrecision::Q8));
    assert!(q8.info().device.contains("Q8"), "{}", q8.info().device);
    let (a, b) = (f32m.info().resident_bytes, q8.info().resident_bytes);
    assert!(b * 5 < a * 2, "Q8 {b} bytes vs f32 {a}");
    let mut s = block_on(q8.new_session(SessionOptions::default())).unwrap();
    let mut req = GenerateRequest::chat("What is 2+2?");
    req.max_tokens = 12;
    let done = block_on(generate(q8.as_ref(), s.as_mut(), req, |_| {})).unwrap();
    assert!(done.text.contains('4'), "{:?}", done.text);
}

/// The CPU backend's default keeps the file's blocks: the model holds
/// about the file's size (the norms, in f32, on top), and says which block
/// types and kernels it runs.
#[test]
fn packed_weights_hold_the_files_size() {
    let path =
        arny_model_store::require_default_model().expect("the default model; run scripts/setup.sh");
    let opts = LoadOptions {
        device: DeviceRequest::Cpu,
        ..LoadOptions::default()
    };
    let m = block_on(BurnEngine::new().load(ModelSource::Path(path), opts)).unwrap();
    let info = m.info();
    assert!(info.device.contains("packed Q4_1/Q8_0"), "{}", info.device);
    // The weights are the file's own bytes; on top of them the model holds
    // its tokenizer (10 MB) and one pass's working set (13 MB), where a
    // dequantized copy would be several times the file.
    assert!(
        info.resident_bytes >= info.file_bytes
            && info.resident_bytes < info.file_bytes + (32 << 20),
        "{} resident for a {}-byte file",
        info.resident_bytes,
        info.file_bytes
    );
}

/// On wgpu the default keeps the file's blocks too, copied to the GPU as
/// word-aligned arrays: the model holds a little more than the file (the
/// arrays' f32 scales, the token table on the host for lookups beside its
/// copy on the GPU as the tied output matrix): 1.7× the file with the
/// tokenizer and working set, where f16 holds 3.9× and f32 6.0×.
#[test]
fn packed_weights_on_wgpu_hold_about_the_files_size() {
    let path =
        arny_model_store::require_default_model().expect("the default model; run scripts/setup.sh");
    let opts = LoadOptions {
        device: DeviceRequest::Gpu,
        ..LoadOptions::default()
    };
    let m = block_on(BurnEngine::new().load(ModelSource::Path(path), opts)).unwrap();
    let info = m.info();
    assert!(info.device.contains("packed Q4_1/Q8_0"), "{}", info.device);
    eprintln!(
        "wgpu packed: {} resident for a {}-byte file",
        info.resident_bytes, info.file_bytes
    );
    assert!(
        info.resident_bytes >= info.file_bytes
            && info.resident_bytes < info.file_bytes * 3 / 2 + (32 << 20),
        "{} resident for a {}-byte file",
        info.resident_bytes,
        info.file_bytes
    );
}
