//! GGUF LoRA adapters on Burn: the same files llama.cpp loads, applied at
//! forward time as `x·W + s·(x·A)·B` (see [`crate::Lora`]). The base
//! weights are never touched, so any number of adapters share one model,
//! and dropping an adapter frees its deltas at once.

use std::any::Any;
use std::sync::{Arc, Weak};

use arny_engine_api::{
    Adapter, AdapterInfo, ModelSource, Result, adapter_for_model, check_adapter_scale,
};
use arny_gguf::GgufFile;
use arny_gguf::lora::LoraFile;

use crate::{ENGINE_ID, Inner, Lora, read};

/// A LoRA adapter loaded for one [`crate::BurnModel`].
pub struct BurnAdapter {
    /// The model it was loaded for; sessions of any other are refused.
    owner: Weak<Inner>,
    lora: Lora,
    info: AdapterInfo,
}

impl BurnAdapter {
    pub(crate) fn load(inner: &Arc<Inner>, source: ModelSource, scale: f32) -> Result<Self> {
        check_adapter_scale(scale)?;
        let (bytes, name) = read(&source)?;
        let file = GgufFile::from_bytes(&bytes).map_err(|e| e.into_engine_error(&name))?;
        let lora = LoraFile::parse(&file, &name)?;
        lora.check_against(&inner.header, &name)?;
        let rank = u32::try_from(lora.rank()).unwrap_or(u32::MAX);
        let mut info = AdapterInfo {
            name,
            rank,
            alpha: lora.alpha,
            scale,
            tensors: u32::try_from(lora.pairs.len()).unwrap_or(u32::MAX),
            file_bytes: bytes.len() as u64,
            resident_bytes: 0,
        };
        let deltas = Lora::load(
            &inner.llama,
            &file,
            &bytes,
            &lora,
            info.effective_scale(),
            &info.name,
        )?;
        info.resident_bytes = deltas.device_bytes;
        tracing::info!(
            adapter = %info.name,
            rank = info.rank,
            alpha = ?info.alpha,
            tensors = info.tensors,
            "loaded LoRA adapter"
        );
        Ok(Self {
            owner: Arc::downgrade(inner),
            lora: deltas,
            info,
        })
    }

    /// `adapter` checked to be this engine's and loaded for `inner`.
    pub(crate) fn for_model(
        adapter: &Arc<dyn Adapter>,
        inner: &Arc<Inner>,
    ) -> Result<Arc<dyn Adapter>> {
        adapter_for_model(adapter, ENGINE_ID, inner, |a: &BurnAdapter| &a.owner)?;
        Ok(adapter.clone())
    }

    /// The deltas of an adapter [`Self::for_model`] accepted.
    pub(crate) fn lora(adapter: &Arc<dyn Adapter>) -> Option<&Lora> {
        adapter
            .as_any()
            .downcast_ref::<BurnAdapter>()
            .map(|a| &a.lora)
    }
}

impl Adapter for BurnAdapter {
    fn info(&self) -> &AdapterInfo {
        &self.info
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
