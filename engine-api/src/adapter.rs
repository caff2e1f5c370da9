//! LoRA adapters: a specialist as a few MB of low-rank deltas over one
//! resident base model.
//!
//! An engine that supports them loads an adapter against a loaded
//! [`crate::Model`] ([`crate::Model::load_adapter`]); a session opened with
//! it ([`crate::SessionOptions::adapter`]) runs `W·x + s·B·(A·x)` for every
//! adapted weight `W`, where `s` is the adapter's scale (`alpha / rank`
//! times the caller's scale). The adapter belongs to the model that loaded
//! it, and a session's KV cache to its (model, adapter) pair: switching
//! specialists is picking another session, never mutating one.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Weak};

use crate::{EngineError, Result};

/// Facts about a loaded adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    /// Where it came from, for messages and status.
    pub name: String,
    /// The LoRA rank (the inner dimension of every A·B pair).
    pub rank: u32,
    /// `adapter.lora.alpha`, when the file states it; the delta is scaled
    /// by `alpha / rank` then.
    pub alpha: Option<f32>,
    /// The caller's scale, applied on top (1.0: as trained).
    pub scale: f32,
    /// How many weights it adapts.
    pub tensors: u32,
    /// Size of the adapter file or buffer.
    pub file_bytes: u64,
    /// Bytes it occupies once loaded.
    pub resident_bytes: u64,
}

impl AdapterInfo {
    /// The factor the B·A product is multiplied by: `scale · alpha / rank`,
    /// or `scale` when the file has no alpha (llama.cpp's rule).
    pub fn effective_scale(&self) -> f32 {
        match self.alpha {
            Some(alpha) if self.rank > 0 => self.scale * alpha / self.rank as f32,
            _ => self.scale,
        }
    }
}

/// A loaded adapter. Engines downcast it ([`Adapter::as_any`]) to their own
/// type, and refuse one another model or engine loaded.
pub trait Adapter: Send + Sync {
    fn info(&self) -> &AdapterInfo;

    /// The engine's concrete type, for its own `new_session`.
    fn as_any(&self) -> &dyn Any;
}

impl fmt::Debug for dyn Adapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Adapter").field(self.info()).finish()
    }
}

/// Checks a caller's adapter scale: finite, and not negative (a negative
/// scale would subtract the specialist's training, which nobody means).
pub fn check_adapter_scale(scale: f32) -> Result<()> {
    if !scale.is_finite() || scale < 0.0 {
        return Err(EngineError::InvalidInput(format!(
            "adapter scale must be a finite number ≥ 0, got {scale}"
        )));
    }
    Ok(())
}

/// The engine's own adapter type behind `adapter`, or
/// [`EngineError::Incompatible`] when another engine made it.
pub fn downcast_adapter<'a, T: 'static>(
    adapter: &'a Arc<dyn Adapter>,
    engine: &str,
) -> Result<&'a T> {
    adapter
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| EngineError::Incompatible {
            source_name: adapter.info().name.clone(),
            reason: format!("the adapter was loaded by another engine, not {engine}"),
        })
}

/// `adapter` as the engine's type `T`, checked to belong to the model
/// whose shared state is `model` (`owner` reads the adapter's link to it):
/// another engine's or another model's adapter is
/// [`EngineError::Incompatible`].
pub fn adapter_for_model<'a, T: 'static, M>(
    adapter: &'a Arc<dyn Adapter>,
    engine: &str,
    model: &Arc<M>,
    owner: impl FnOnce(&T) -> &Weak<M>,
) -> Result<&'a T> {
    let ours: &T = downcast_adapter(adapter, engine)?;
    let same = owner(ours)
        .upgrade()
        .is_some_and(|o| Arc::ptr_eq(&o, model));
    if !same {
        return Err(EngineError::Incompatible {
            source_name: adapter.info().name.clone(),
            reason: "the adapter was loaded by another model".into(),
        });
    }
    Ok(ours)
}
