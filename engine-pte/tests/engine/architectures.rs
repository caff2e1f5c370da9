//! Families other than Llama through `arny export pte` (fp32), on the tiny
//! generated models: Qwen2 (QKV bias, the `qwen2` BPE pre-tokenizer)
//! exports and equals llama.cpp, tokens and logits. The other families
//! stop in the exporter's transformers loader (see the README's
//! architectures table for each reason).

use arny_conformance::compare::{argmax, kl_divergence};
use arny_conformance::{TinyArch, TinyModel};
use arny_engine_api::{
    InferenceEngine, LoadOptions, Model, ModelSource, SessionOptions, teacher_forced_logits,
};
use arny_pte_export::{PteQuant, cached_export};
use futures::executor::block_on;

fn load(engine: &dyn InferenceEngine, path: std::path::PathBuf) -> std::sync::Arc<dyn Model> {
    block_on(engine.load(ModelSource::Path(path), LoadOptions::default()))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn tiny_qwen2_equals_llama_cpp() {
    let gguf = TinyModel::of(TinyArch::Qwen2).file().unwrap();
    let pte = cached_export(&gguf, PteQuant::Fp32, 256, &mut |_| {})
        .unwrap_or_else(|e| panic!("exporting the tiny Qwen2 model: {e}"));
    let reference = load(&arny_engine_gguf::GgufEngine::new(), gguf);
    let candidate = load(&arny_engine_pte::PteEngine::new(), pte);
    assert_eq!(candidate.info().architecture, "qwen2");
    // The program's tokenizer.json (transformers' Qwen2 conversion) cuts
    // text as llama.cpp's `qwen2` pre-tokenizer does.
    for text in [
        "The quick brown fox jumps over the lazy dog, and the cat sleeps in the warm sun.",
        "  leading spaces, tabs\tand\nnewlines\n\n",
        "numbers 12345 and 3.14159, contractions: I'm, you'll, we've",
        "unicode: café, naïve, 日本語, emoji 🙂",
        "<|im_start|>user\nHi there<|im_end|>",
    ] {
        for special in [false, true] {
            assert_eq!(
                candidate.tokenize(text, false, special).unwrap(),
                reference.tokenize(text, false, special).unwrap(),
                "{text:?} (parse_special {special})"
            );
        }
    }
    let seq = reference
        .tokenize(
            "Once upon a time there was a small village by the sea, and every morning the boats went out.",
            false,
            false,
        )
        .unwrap();
    let logits = |m: &dyn Model| {
        let mut s = block_on(m.new_session(SessionOptions::default())).expect("session");
        block_on(teacher_forced_logits(s.as_mut(), &seq)).expect("logits")
    };
    let (want, got) = (logits(reference.as_ref()), logits(candidate.as_ref()));
    let (mut agree, mut kl) = (0, 0f64);
    for i in 0..seq.len() {
        agree += usize::from(argmax(want.row(i)) == argmax(got.row(i)));
        kl += kl_divergence(want.row(i), got.row(i));
    }
    let kl = kl / seq.len() as f64;
    eprintln!(
        "tiny qwen2, pte fp32 vs llama.cpp: top-1 {agree}/{}, mean KL {kl:.2e}",
        seq.len()
    );
    assert_eq!(agree, seq.len(), "top-1");
    assert!(kl <= 1e-3, "mean KL {kl}");
}
