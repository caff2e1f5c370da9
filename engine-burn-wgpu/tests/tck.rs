//! The engine TCK on Burn's CPU backend and the default model.

use std::sync::Arc;

use arny_conformance::{Target, engine_tck};
use arny_engine_api::{DeviceRequest, LoadOptions};

fn target() -> Target {
    let model_path = arny_model_store::require_default_model().unwrap_or_else(|e| panic!("{e}"));
    Target {
        engine: Arc::new(arny_engine_burn_wgpu::BurnEngine::new()),
        model_path,
        options: LoadOptions {
            device: DeviceRequest::Cpu,
            ..LoadOptions::default()
        },
    }
}

engine_tck!(target);
