//! The engine TCK, unchanged, on both of Burn's backends and the default
//! model. Without a GPU the wgpu cases run on lavapipe (Mesa's Vulkan on
//! the CPU, installed by scripts/setup.sh): slow, but the same shaders,
//! buffers and readbacks a GPU gets. No adapter at all fails the wgpu
//! cases rather than skipping them.

use std::sync::Arc;

use arny_conformance::Target;
use arny_engine_api::{DeviceRequest, LoadOptions};

fn target(device: DeviceRequest) -> Target {
    let model_path = arny_model_store::require_default_model().unwrap_or_else(|e| panic!("{e}"));
    Target {
        engine: Arc::new(arny_engine_burn_wgpu::BurnEngine::new()),
        model_path,
        options: LoadOptions {
            device,
            ..LoadOptions::default()
        },
    }
}

mod cpu {
    fn target() -> arny_conformance::Target {
        super::target(super::DeviceRequest::Cpu)
    }
    arny_conformance::engine_tck!(target);
}

mod wgpu {
    fn target() -> arny_conformance::Target {
        super::target(super::DeviceRequest::Gpu)
    }
    arny_conformance::engine_tck!(target);
}
