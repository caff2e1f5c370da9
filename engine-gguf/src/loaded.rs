//! What a loaded GGUF model holds, shared by the model handle and its
//! sessions (each session's llama.cpp context borrows the model).

use std::cell::UnsafeCell;
use std::sync::{RwLock, RwLockReadGuard};

use arny_engine_api::{ChatTemplate, ModelInfo, SpecialTokens};
use arny_gguf::GgufFile;
use llama_cpp_2::model::LlamaModel;

/// The llama.cpp model, shared by every session, and writable only to load
/// an adapter.
///
/// llama-cpp-2 asks for `&mut LlamaModel` to load a LoRA adapter because
/// llama.cpp records the adapter in the model (`llama_model::loras`): it is
/// freed with the model, and every context sizes its compute graph by the
/// adapters the model holds when it reserves that graph (at creation, and
/// on the first decode after its adapters are set). So loading an adapter
/// takes the write side of `access`, and everything else that reaches the
/// model (tokenizing, creating a context, decoding) the read side: no
/// shared reference to the model, and no reserve reading the adapter list,
/// exists while it changes.
pub(crate) struct SharedModel {
    model: UnsafeCell<LlamaModel>,
    access: RwLock<()>,
}

// SAFETY: `LlamaModel` is Send + Sync; the only `&mut` access goes through
// `with_mut`, which holds the write lock, and every shared access holds the
// read lock (`read`).
unsafe impl Sync for SharedModel {}

impl SharedModel {
    pub(crate) fn new(model: LlamaModel) -> Self {
        Self {
            model: UnsafeCell::new(model),
            access: RwLock::new(()),
        }
    }

    /// Shared access; hold the guard for as long as llama.cpp works on the
    /// model or one of its contexts.
    pub(crate) fn read(&self) -> ModelRef<'_> {
        let guard = self.access.read().unwrap_or_else(|e| e.into_inner());
        // SAFETY: see the type's comment; the read lock excludes `with_mut`.
        let model = unsafe { &*self.model.get() };
        ModelRef {
            _guard: guard,
            model,
        }
    }

    /// Exclusive access, for loading an adapter.
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(&mut LlamaModel) -> R) -> R {
        let _guard = self.access.write().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the write lock excludes every other access.
        f(unsafe { &mut *self.model.get() })
    }
}

/// A shared borrow of the model under the read lock.
pub struct ModelRef<'a> {
    _guard: RwLockReadGuard<'a, ()>,
    model: &'a LlamaModel,
}

impl<'a> ModelRef<'a> {
    /// The borrow itself, for creating a context: llama-cpp-2 ties the
    /// context's lifetime to it, but the context keeps only llama.cpp's
    /// own pointer, so no Rust reference is used after the guard is gone.
    pub(crate) fn unguarded(&self) -> &'a LlamaModel {
        self.model
    }
}

impl std::ops::Deref for ModelRef<'_> {
    type Target = LlamaModel;

    fn deref(&self) -> &LlamaModel {
        self.model
    }
}

pub(crate) struct Inner {
    pub(crate) model: SharedModel,
    pub(crate) threads: u32,
    /// Bytes of every token, precomputed so streaming never calls into C.
    pub(crate) pieces: Vec<Vec<u8>>,
    pub(crate) info: ModelInfo,
    pub(crate) special: SpecialTokens,
    pub(crate) template: Option<ChatTemplate>,
    pub(crate) seed: u64,
    /// The tensor directory (and architecture) that adapters are checked
    /// against before llama.cpp sees them.
    pub(crate) header: GgufFile,
    /// Keeps a spilled in-memory model on disk while it is mapped.
    pub(crate) _spill: Option<tempfile::NamedTempFile>,
    /// Last: trims the heap after the model is freed.
    pub(crate) _trim: crate::backend::TrimOnDrop,
}

impl Inner {
    pub(crate) fn n_vocab(&self) -> usize {
        self.pieces.len()
    }
}
