//! The engine TCK, unchanged, on both of Burn's backends. Without a GPU the
//! wgpu cases run on lavapipe (Mesa's Vulkan on the CPU, installed by
//! scripts/setup.sh): slow, but the same shaders, buffers and readbacks a
//! GPU gets; the contract cases run on the tiny model, so only the
//! behaviour cases pay lavapipe's price on the real one. No adapter at all
//! fails the wgpu cases rather than skipping them.

use std::sync::Arc;

use arny_conformance::{Target, reference_gguf, tiny_gguf};
use arny_engine_api::{DeviceRequest, LoadOptions};

fn target(device: DeviceRequest) -> Target {
    Target {
        engine: Arc::new(arny_engine_burn_wgpu::BurnEngine::new()),
        model_path: reference_gguf(),
        tiny_model_path: tiny_gguf(),
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
