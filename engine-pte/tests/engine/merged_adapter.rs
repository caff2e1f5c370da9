//! A LoRA adapter on the pte engine is merged into a program at export
//! (`arny export pte --adapter`). On the tiny model with a seeded random
//! adapter: the merged program computes what llama.cpp computes with the
//! same adapter file applied at run time, and differs from the plain
//! program; adapters that do not fit are refused before Python starts.

use std::sync::Arc;

use arny_conformance::cases::random_adapter;
use arny_conformance::compare::{argmax, kl_divergence};
use arny_engine_api::{
    Adapter, InferenceEngine, LoadOptions, LogitsRequest, Model, ModelSource, SessionOptions,
    TokenId,
};
use arny_pte_export::{MergedAdapter, PteQuant, cached_export, cached_merged_export};
use futures::executor::block_on;

const MAX_LEN: u32 = 256;

fn all_rows(m: &dyn Model, adapter: Option<Arc<dyn Adapter>>, tokens: &[TokenId]) -> Vec<Vec<f32>> {
    let mut s = block_on(m.new_session(SessionOptions {
        adapter,
        ..Default::default()
    }))
    .unwrap();
    let l = block_on(s.eval(tokens, LogitsRequest::All)).unwrap();
    (0..l.rows()).map(|i| l.row(i).to_vec()).collect()
}

fn pte(path: std::path::PathBuf) -> Arc<dyn Model> {
    block_on(
        arny_engine_pte::PteEngine::new().load(ModelSource::Path(path), LoadOptions::default()),
    )
    .unwrap()
}

#[test]
fn a_merged_program_computes_what_llama_cpp_computes_with_the_adapter() {
    let tiny = arny_conformance::tiny_gguf();
    let dir = tempfile::tempdir().unwrap();
    let lora_path = dir.path().join("tiny.lora.gguf");
    std::fs::write(&lora_path, random_adapter(&tiny)).unwrap();
    let lora = MergedAdapter::new(&lora_path, &tiny, 1.0).unwrap();
    let merged = cached_merged_export(&tiny, PteQuant::Fp32, MAX_LEN, Some(&lora), &mut |_| {})
        .unwrap_or_else(|e| panic!("exporting the tiny model with the adapter: {e}"));
    let plain = cached_export(&tiny, PteQuant::Fp32, MAX_LEN, &mut |_| {}).unwrap();
    assert_ne!(merged, plain);
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(merged.with_file_name("arny-export.json")).unwrap())
            .unwrap();
    assert_eq!(sidecar["adapter"]["sha256"], lora.sha256.as_str());

    let llama = block_on(
        arny_engine_gguf::GgufEngine::new().load(ModelSource::Path(tiny), LoadOptions::default()),
    )
    .unwrap();
    let adapter = block_on(llama.load_adapter(ModelSource::Path(lora_path), 1.0)).unwrap();
    let (merged, plain) = (pte(merged), pte(plain));
    let tokens: Vec<TokenId> = (0..48).map(|i| (i * 37 + 5) % 200 + 10).collect();
    let want = all_rows(llama.as_ref(), Some(adapter), &tokens);
    let got = all_rows(merged.as_ref(), None, &tokens);
    let base = all_rows(plain.as_ref(), None, &tokens);
    let (mut agree, mut kl, mut kl_base) = (0, 0f64, 0f64);
    for ((w, g), b) in want.iter().zip(&got).zip(&base) {
        agree += usize::from(argmax(w) == argmax(g));
        kl += kl_divergence(w, g) / want.len() as f64;
        kl_base += kl_divergence(w, b) / want.len() as f64;
    }
    eprintln!(
        "merged program vs llama.cpp + adapter: top-1 {agree}/{}, mean KL {kl:.6}; plain program: mean KL {kl_base:.6}",
        want.len()
    );
    assert!(agree >= want.len() - 1, "top-1 {agree}/{}", want.len());
    assert!(kl < 1e-3, "mean KL {kl}");
    assert!(
        kl_base > 20.0 * kl.max(1e-5),
        "the adapter changes little: {kl_base}"
    );
}

#[test]
fn adapters_that_do_not_fit_are_refused_before_the_export() {
    let tiny = arny_conformance::tiny_gguf();
    let dir = tempfile::tempdir().unwrap();
    let code = |bytes: &[u8]| {
        let p = dir.path().join("a.gguf");
        std::fs::write(&p, bytes).unwrap();
        match MergedAdapter::new(&p, &tiny, 1.0).unwrap_err() {
            arny_pte_export::ExportError::Adapter(e) => e.code(),
            other => panic!("{other}"),
        }
    };
    assert_eq!(code(&std::fs::read(&tiny).unwrap()), "wrong_format");
    let reference = random_adapter(&arny_conformance::reference_gguf());
    assert_eq!(code(&reference), "incompatible");
    let ok = random_adapter(&tiny);
    assert_eq!(code(&ok[..ok.len() - 64]), "corrupt");
}
