//! A GGUF file as a model and as an adapter: Arny's reader, the checks made
//! before llama.cpp opens a model, the LoRA checks against a base, and
//! every tensor's bytes and dequantization. Any input may be rejected, with
//! a typed error; none may panic, hang or allocate beyond its size.
#![no_main]

use std::sync::OnceLock;

use arny_gguf::lora::LoraFile;
use arny_gguf::{GgufFile, llama};
use libfuzzer_sys::fuzz_target;

fn base() -> &'static GgufFile {
    static BASE: OnceLock<GgufFile> = OnceLock::new();
    BASE.get_or_init(|| {
        GgufFile::from_bytes(&arny_tiny_models::TinyModel::default().gguf())
            .expect("the tiny model parses")
    })
}

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    if let Ok(f) = GgufFile::read_with(data, len, llama::READ_OPTIONS) {
        let _ = llama::check_model(&f, "fuzz");
    }
    let Ok(f) = GgufFile::from_bytes(data) else {
        return;
    };
    if let Ok(lora) = LoraFile::parse(&f, "fuzz") {
        let _ = lora.check_against(base(), "fuzz");
    }
    for t in &f.tensors {
        if let Ok(bytes) = f.tensor_data(data, t) {
            assert!(bytes.len() as u64 <= len);
            // Dequantizing allocates four bytes per element: only for
            // tensors whose data is really in the input.
            if t.elements() <= 1 << 16 {
                let _ = f.dequantize(data, t);
            }
        }
    }
});
