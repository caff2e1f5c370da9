//! What a loaded GGUF model holds, shared by the model handle and its
//! sessions (each session's llama.cpp context borrows the model).

use arny_engine_api::{ChatTemplate, ModelInfo, SpecialTokens};
use llama_cpp_2::model::LlamaModel;

pub(crate) struct Inner {
    pub(crate) model: LlamaModel,
    pub(crate) threads: u32,
    /// Bytes of every token, precomputed so streaming never calls into C.
    pub(crate) pieces: Vec<Vec<u8>>,
    pub(crate) info: ModelInfo,
    pub(crate) special: SpecialTokens,
    pub(crate) template: ChatTemplate,
    pub(crate) seed: u64,
    /// Keeps a spilled in-memory model on disk while it is mapped.
    pub(crate) _spill: Option<tempfile::NamedTempFile>,
}

impl Inner {
    pub(crate) fn n_vocab(&self) -> usize {
        self.pieces.len()
    }
}
