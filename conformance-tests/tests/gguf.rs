//! The engine TCK on the llama.cpp engine: the tiny model and the default
//! model, both GGUF.

use std::sync::Arc;

use arny_conformance::{Target, engine_tck, reference_gguf, tiny_gguf};
use arny_engine_api::LoadOptions;

fn target() -> Target {
    Target {
        engine: Arc::new(arny_engine_gguf::GgufEngine::new()),
        model_path: reference_gguf(),
        tiny_model_path: tiny_gguf(),
        options: LoadOptions::default(),
    }
}

engine_tck!(target);

/// The cross-engine comparison, run on llama.cpp against itself with a
/// different thread count: the machinery that will hold other engines to
/// the bar (top-1 ≥ 98%, mean KL ≤ 0.02 nats).
#[test]
fn cross_engine_comparison_of_gguf_with_itself() {
    use arny_conformance::compare::{CompareOptions, PROMPTS, compare};
    use arny_engine_api::{InferenceEngine, LoadOptions, ModelSource};
    let path = reference_gguf();
    let load = |threads| {
        futures::executor::block_on(arny_engine_gguf::GgufEngine::new().load(
            ModelSource::Path(path.clone()),
            LoadOptions {
                threads: Some(threads),
                context_length: Some(512),
                ..LoadOptions::default()
            },
        ))
        .unwrap()
    };
    let (a, b) = (load(1), load(2));
    let opts = CompareOptions {
        prompts: PROMPTS[..3].iter().map(|s| s.to_string()).collect(),
        positions: 24,
        greedy_tokens: 12,
    };
    let r = futures::executor::block_on(compare(a.as_ref(), b.as_ref(), &opts)).unwrap();
    assert_eq!(r.prompts.len(), 3);
    assert!(r.prompts.iter().all(|p| p.positions == 24), "{r:?}");
    assert!(r.top1_agreement >= 0.98, "{r:?}");
    assert!(r.mean_kl <= 0.02 && r.max_kl.is_finite(), "{r:?}");
    assert_eq!(r.greedy_identical, 3, "{r:?}");
}
