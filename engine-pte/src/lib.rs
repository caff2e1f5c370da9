//! # arny-engine-pte
//!
//! Arny's ExecuTorch engine: `.pte` programs exported from the same model
//! (`arny export pte`), run by the runtime that ships in the `executorch`
//! Python wheel, XNNPACK on the CPU. The runtime is C++; a small shim
//! (`shim/pte_shim.cpp`, built by `build.rs`) gives it a C surface, and
//! this crate wraps that in the engine traits.
//!
//! What the engine reads from a program:
//! * `forward`'s signature, to support both exporters: optimum-executorch's
//!   `forward(input_ids [1, seq], cache_position [seq]) -> [1, seq, vocab]`
//!   and ExecuTorch's export_llm's `forward(tokens [1, seq], input_pos [1])
//!   -> [1, vocab]`. The largest `seq` is the prefill chunk.
//! * the metadata methods (`get_max_seq_len`, `get_vocab_size`, ...), and
//!   for programs Arny exported, the model facts and the source GGUF's
//!   `tokenizer.*` keys (`get_arny_*`), from which the tokenizer, special
//!   tokens and chat template are built as the other engines build them,
//!   so one file is the whole model. Other programs need the
//!   `tokenizer.json` their exporter wrote beside them.
//!
//! The program's context is its `max_seq_len`: a prompt or generation that
//! would pass it fails with [`arny_engine_api::EngineError::ContextOverflow`]
//! (generation stops with `ContextFull`), never reading or writing past the
//! static cache.

mod ffi;
mod header;
mod model;

use std::sync::Arc;

use arny_engine_api::{InferenceEngine, LoadOptions, Model, ModelSource, Result};

pub use model::{PteModel, PteSession};

/// The id configs and the CLI use for this engine.
pub const ENGINE_ID: &str = "pte";

/// The ExecuTorch engine. Cheap to create; the runtime is opened on the
/// first load.
#[derive(Debug, Default, Clone)]
pub struct PteEngine;

impl PteEngine {
    pub fn new() -> Self {
        Self
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
impl InferenceEngine for PteEngine {
    fn id(&self) -> &'static str {
        ENGINE_ID
    }

    async fn load(&self, source: ModelSource, options: LoadOptions) -> Result<Arc<dyn Model>> {
        Ok(Arc::new(PteModel::load(source, &options)?))
    }
}
