//! The engine TCK on the llama.cpp engine and the default model.

use std::sync::Arc;

use arny_conformance::{Target, engine_tck};
use arny_engine_api::LoadOptions;

fn target() -> Target {
    let model_path = arny_model_store::require_default_model().unwrap_or_else(|e| panic!("{e}"));
    Target {
        engine: Arc::new(arny_engine_gguf::GgufEngine::new()),
        model_path,
        options: LoadOptions::default(),
    }
}

engine_tck!(target);
