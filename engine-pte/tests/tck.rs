//! The engine TCK, unchanged, on the fp32 export of the default model
//! (`arny export pte` makes it; scripts/test.sh does so before the tests).
//! A missing export fails the cases rather than skipping them.

use std::sync::Arc;

use arny_conformance::Target;
use arny_engine_api::LoadOptions;
use arny_model_store::pte::{PteQuant, require_default_export};

fn target() -> Target {
    let model_path = require_default_export(PteQuant::Fp32).unwrap_or_else(|e| panic!("{e}"));
    Target {
        engine: Arc::new(arny_engine_pte::PteEngine::new()),
        model_path,
        options: LoadOptions::default(),
    }
}

arny_conformance::engine_tck!(target);
