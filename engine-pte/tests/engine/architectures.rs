//! Families other than SmolLM2's through `arny export pte` (fp32), on the
//! tiny generated models: Llama 3 (RoPE frequency factors), Qwen2 (QKV
//! bias), Qwen3 (QK-norm, wider heads), Gemma 3 (sliding-window layers,
//! GeGLU, soft-capping, a SentencePiece vocabulary) and Phi-3 (fused
//! projections, SentencePiece). Each program must tokenize as llama.cpp
//! does on the source file and equal its logits.

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

/// Strings where tokenizers differ: spaces and newlines, digits,
/// contractions, accents, CJK and emoji (SentencePiece's byte fallback),
/// and chat markers (special in the BPE vocabularies, user-defined in the
/// SentencePiece ones).
const TRICKY: [&str; 6] = [
    "The quick brown fox jumps over the lazy dog, and the cat sleeps in the warm sun.",
    "  leading spaces, tabs\tand\nnewlines\n\n",
    "numbers 12345 and 3.14159, contractions: I'm, you'll, we've",
    "unicode: café, naïve, 日本語, emoji 🙂",
    "<|im_start|>user\nHi there<|im_end|>",
    " a leading space and a trailing one ",
];

fn equals_llama_cpp(arch: TinyArch, name: &str) {
    let gguf = TinyModel::of(arch).file().unwrap();
    let pte = cached_export(&gguf, PteQuant::Fp32, 256, &mut |_| {})
        .unwrap_or_else(|e| panic!("exporting the tiny {name} model: {e}"));
    let reference = load(&arny_engine_gguf::GgufEngine::new(), gguf);
    let candidate = load(&arny_engine_pte::PteEngine::new(), pte);
    assert_eq!(candidate.info().architecture, reference.info().architecture);
    assert_eq!(candidate.special_tokens(), reference.special_tokens());
    for text in TRICKY {
        for (add_special, parse_special) in [(false, false), (false, true), (true, true)] {
            assert_eq!(
                candidate
                    .tokenize(text, add_special, parse_special)
                    .unwrap(),
                reference
                    .tokenize(text, add_special, parse_special)
                    .unwrap(),
                "{name}: {text:?} (add_special {add_special}, parse_special {parse_special})"
            );
        }
    }
    // Longer than the tiny Gemma 3's 8-token window, so its sliding layers
    // drop positions.
    let seq = reference
        .tokenize(
            "Once upon a time there was a small village by the sea, and every morning the boats went out.",
            true,
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
        "tiny {name}, pte fp32 vs llama.cpp: top-1 {agree}/{}, mean KL {kl:.2e}",
        seq.len()
    );
    assert_eq!(agree, seq.len(), "{name}: top-1");
    assert!(kl <= 1e-3, "{name}: mean KL {kl}");
}

#[test]
fn tiny_llama3_equals_llama_cpp() {
    equals_llama_cpp(TinyArch::Llama3, "llama3");
}

#[test]
fn tiny_qwen2_equals_llama_cpp() {
    equals_llama_cpp(TinyArch::Qwen2, "qwen2");
}

#[test]
fn tiny_qwen3_equals_llama_cpp() {
    equals_llama_cpp(TinyArch::Qwen3, "qwen3");
}

#[test]
fn tiny_gemma3_equals_llama_cpp() {
    equals_llama_cpp(TinyArch::Gemma3, "gemma3");
}

#[test]
fn tiny_phi3_equals_llama_cpp() {
    equals_llama_cpp(TinyArch::Phi3, "phi3");
}
