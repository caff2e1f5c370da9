//! The engine TCK, unchanged, on the fp32 export of the default model
//! (`arny export pte` makes it; scripts/test.sh does so before the tests)
//! and on an export of the tiny model (made here on first use, about a
//! minute, then cached by content). A missing export venv fails the cases
//! rather than skipping them.

use std::sync::Arc;

use arny_conformance::{Target, tiny_gguf};
use arny_engine_api::LoadOptions;
use arny_pte_export::{PteQuant, cached_export, require_default_export};

/// The tiny program's static cache: more than the TCK's longest use.
const TINY_MAX_LEN: u32 = 256;

fn target() -> Target {
    let model_path = require_default_export(PteQuant::Fp32).unwrap_or_else(|e| panic!("{e}"));
    let tiny_model_path = cached_export(&tiny_gguf(), PteQuant::Fp32, TINY_MAX_LEN, &mut |_| {})
        .unwrap_or_else(|e| panic!("exporting the tiny model: {e}"));
    Target {
        engine: Arc::new(arny_engine_pte::PteEngine::new()),
        model_path,
        tiny_model_path,
        options: LoadOptions::default(),
    }
}

arny_conformance::engine_tck!(target);
