//! The fp32 export against its references, on real tokens and logits:
//!
//! * transformers: greedy ids from the same float32 weights, checked in by
//!   `fixtures/make_transformers_reference.py`, must come out token for
//!   token (5 prompts × 32 tokens, the prompt ids too);
//! * llama.cpp (engine-gguf, the Q4_1 source): teacher-forced top-1
//!   agreement over those sequences must be at least 98%.

use arny_conformance::compare::{argmax, kl_divergence};
use arny_engine_api::{
    ChatMessage, InferenceEngine, LoadOptions, LogitsRequest, Model, ModelSource, SessionOptions,
    TokenId, teacher_forced_logits,
};
use arny_pte_export::{PteQuant, require_default_export};

const FIXTURE: &str = include_str!("../fixtures/transformers_greedy.json");

#[derive(serde::Deserialize)]
struct Fixture {
    source_sha256: String,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    prompt: String,
    prompt_ids: Vec<TokenId>,
    greedy_ids: Vec<TokenId>,
}

fn fixture() -> Fixture {
    let f: Fixture = serde_json::from_str(FIXTURE).expect("fixture");
    assert_eq!(f.source_sha256, arny_model_store::DEFAULT_MODEL.sha256);
    assert_eq!(f.cases.len(), 5);
    f
}

async fn load(engine: &dyn InferenceEngine, path: std::path::PathBuf) -> std::sync::Arc<dyn Model> {
    engine
        .load(ModelSource::Path(path), LoadOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn pte() -> std::sync::Arc<dyn Model> {
    let path = require_default_export(PteQuant::Fp32).unwrap_or_else(|e| panic!("{e}"));
    load(&arny_engine_pte::PteEngine::new(), path).await
}

#[test]
fn fp32_greedy_equals_transformers() {
    futures::executor::block_on(async {
        let model = pte().await;
        for case in fixture().cases {
            let text = model
                .render_chat(&[ChatMessage::user(case.prompt.clone())], true)
                .expect("render");
            let ids = model.tokenize(&text, false, true).expect("tokenize");
            assert_eq!(ids, case.prompt_ids, "prompt ids of {:?}", case.prompt);
            let mut s = model
                .new_session(SessionOptions::default())
                .await
                .expect("session");
            let mut logits = s.eval(&ids, LogitsRequest::Last).await.expect("prefill");
            let mut got = Vec::new();
            for _ in 0..case.greedy_ids.len() {
                let next = argmax(logits.last()) as TokenId;
                got.push(next);
                logits = s.eval(&[next], LogitsRequest::Last).await.expect("decode");
            }
            let first_diff = got.iter().zip(&case.greedy_ids).position(|(a, b)| a != b);
            assert_eq!(
                got, case.greedy_ids,
                "{:?}: first difference at step {first_diff:?}",
                case.prompt
            );
        }
    });
}

#[test]
fn fp32_top1_agrees_with_llama_cpp() {
    futures::executor::block_on(async {
        let pte = pte().await;
        let gguf_path = arny_model_store::require_default_model().unwrap_or_else(|e| panic!("{e}"));
        let gguf = load(&arny_engine_gguf::GgufEngine::new(), gguf_path).await;
        let (mut agree, mut total, mut kl) = (0usize, 0usize, 0f64);
        for case in fixture().cases {
            let seq: Vec<TokenId> = case
                .prompt_ids
                .iter()
                .chain(&case.greedy_ids)
                .copied()
                .collect();
            let mut a = pte
                .new_session(SessionOptions::default())
                .await
                .expect("session");
            let mut b = gguf
                .new_session(SessionOptions::default())
                .await
                .expect("session");
            let la = teacher_forced_logits(a.as_mut(), &seq)
                .await
                .expect("pte logits");
            let lb = teacher_forced_logits(b.as_mut(), &seq)
                .await
                .expect("gguf logits");
            assert_eq!(la.rows(), seq.len());
            assert_eq!(lb.rows(), seq.len());
            for i in 0..seq.len() {
                agree += usize::from(argmax(la.row(i)) == argmax(lb.row(i)));
                kl += kl_divergence(lb.row(i), la.row(i));
                total += 1;
            }
        }
        let top1 = agree as f64 / total as f64;
        let mean_kl = kl / total as f64;
        eprintln!(
            "pte fp32 vs llama.cpp: top-1 {top1:.4} over {total} positions, mean KL {mean_kl:.5}"
        );
        assert!(
            top1 >= 0.98,
            "top-1 agreement {top1:.4} over {total} positions"
        );
        assert!(mean_kl <= 0.02, "mean KL {mean_kl:.5}");
    });
}
