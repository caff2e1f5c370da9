//! GGUF LoRA adapters through llama.cpp's `llama_adapter_lora_init`.
//!
//! The file is checked by Arny's reader against the model's tensor
//! directory first (architecture, names, shapes, types, data inside the
//! file), so llama.cpp only ever sees an adapter it will accept, and the
//! caller gets a typed error instead of a line in llama.cpp's log.
//!
//! llama.cpp keeps an adapter's tensors in its own CPU buffer and frees
//! them with the model, not before: dropping a [`GgufAdapter`] does not
//! return its memory while the base model is loaded.

use std::any::Any;
use std::sync::{Arc, Mutex, Weak};

use arny_engine_api::{
    Adapter, AdapterInfo, EngineError, ModelSource, Result, adapter_for_model, check_adapter_scale,
};
use arny_gguf::GgufFile;
use llama_cpp_2::model::LlamaLoraAdapter;

use crate::ENGINE_ID;
use crate::backend::{clear_last_error, last_llama_error};
use crate::loaded::Inner;
use crate::validate::{check_lora, read_header};

/// A LoRA adapter loaded into one [`crate::GgufModel`].
pub struct GgufAdapter {
    /// The model it was loaded into; sessions of any other are refused.
    owner: Weak<Inner>,
    /// llama-cpp-2 wants `&mut` to attach it to a context.
    pub(crate) handle: Mutex<LlamaLoraAdapter>,
    info: AdapterInfo,
}

impl GgufAdapter {
    pub(crate) fn load(inner: &Arc<Inner>, source: ModelSource, scale: f32) -> Result<Self> {
        check_adapter_scale(scale)?;
        let name = source.display_name();
        // llama.cpp reads adapters from files: bytes are checked in memory,
        // then spilled to a temp file that lives until the load is done.
        let (path, file_bytes, lora, _spill) = match &source {
            ModelSource::Path(path) => {
                let (len, header) = read_header(path, Default::default())?;
                let lora = check_lora(&header, &inner.header, &name)?;
                (path.clone(), len, lora, None)
            }
            ModelSource::Bytes { bytes, .. } => {
                let header = GgufFile::from_bytes(bytes).map_err(|e| e.into_engine_error(&name))?;
                let lora = check_lora(&header, &inner.header, &name)?;
                let mut tmp = tempfile::Builder::new()
                    .prefix("arny-adapter-")
                    .suffix(".gguf")
                    .tempfile()
                    .map_err(|e| EngineError::io("create temp file", e))?;
                std::io::Write::write_all(&mut tmp, bytes)
                    .map_err(|e| EngineError::io("write temp file", e))?;
                (
                    tmp.path().to_path_buf(),
                    bytes.len() as u64,
                    lora,
                    Some(tmp),
                )
            }
        };
        clear_last_error();
        let handle = inner
            .model
            .with_mut(|model| model.lora_adapter_init(&path))
            .map_err(|e| {
                EngineError::engine(
                    ENGINE_ID,
                    format!(
                        "loading the adapter {name}: {}",
                        last_llama_error().unwrap_or_else(|| e.to_string())
                    ),
                )
            })?;
        let resident_bytes = lora
            .pairs
            .iter()
            .map(|p| p.a.bytes.unwrap_or(0) + p.b.bytes.unwrap_or(0))
            .sum();
        let info = AdapterInfo {
            name,
            rank: u32::try_from(lora.rank()).unwrap_or(u32::MAX),
            alpha: lora.alpha,
            scale,
            tensors: u32::try_from(lora.pairs.len()).unwrap_or(u32::MAX),
            file_bytes,
            resident_bytes,
        };
        tracing::info!(
            adapter = %info.name,
            rank = info.rank,
            alpha = ?info.alpha,
            tensors = info.tensors,
            "loaded LoRA adapter"
        );
        Ok(Self {
            owner: Arc::downgrade(inner),
            handle: Mutex::new(handle),
            info,
        })
    }

    /// `adapter` as this engine's type, checked to belong to `inner`.
    pub(crate) fn for_model(
        adapter: &Arc<dyn Adapter>,
        inner: &Arc<Inner>,
    ) -> Result<Arc<dyn Adapter>> {
        adapter_for_model(adapter, ENGINE_ID, inner, |a: &GgufAdapter| &a.owner)?;
        Ok(adapter.clone())
    }
}

impl Adapter for GgufAdapter {
    fn info(&self) -> &AdapterInfo {
        &self.info
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
