//! The engine traits.
//!
//! The split follows what differs between engines and what does not. An
//! engine only has to load weights, tokenize, and run the model forward over
//! new tokens while keeping its KV cache ([`Session::eval`]). Everything
//! above that (templates, sampling, stop strings, streaming, cancellation,
//! timings) lives once in this crate, so every engine behaves the same.

use std::sync::Arc;

use crate::chat_template::ChatTemplate;
use crate::{
    ChatMessage, EngineError, LoadOptions, Logits, LogitsRequest, ModelInfo, ModelSource, Result,
    SpecialTokens, TokenId,
};

/// A way to run models: llama.cpp, ExecuTorch, Burn.
///
/// Implementations are cheap handles; the expensive state lives in the
/// [`Model`]s they load.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait InferenceEngine: Send + Sync {
    /// The id used in configs and on the command line: `gguf`, `pte`, `burn`.
    fn id(&self) -> &'static str;

    /// Loads a model. Bad input (a missing file, a foreign or truncated
    /// file) returns a typed error; it never panics or aborts.
    async fn load(&self, source: ModelSource, options: LoadOptions) -> Result<Arc<dyn Model>>;
}

/// Options for a new [`Session`].
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Overrides the model's default context length for this session.
    pub context_length: Option<u32>,
}

/// Loaded weights plus tokenizer. Shared by any number of sessions.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait Model: Send + Sync {
    fn info(&self) -> &ModelInfo;

    fn special_tokens(&self) -> &SpecialTokens;

    /// The template conversations are rendered with (the model's own unless
    /// it has none).
    fn chat_template(&self) -> &ChatTemplate;

    /// Seed used by requests that do not set one.
    fn default_seed(&self) -> u64 {
        0
    }

    /// Text to token ids. `add_special` adds BOS/EOS as the model wants;
    /// `parse_special` turns texts like `<|im_start|>` into their tokens.
    fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<TokenId>>;

    /// The raw bytes a token stands for. A byte-level token may hold part of
    /// a UTF-8 character; [`crate::Utf8Stream`] reassembles them.
    fn token_bytes(&self, token: TokenId) -> Result<&[u8]>;

    /// Token ids to text; bytes that do not form UTF-8 become U+FFFD.
    fn detokenize(&self, tokens: &[TokenId]) -> Result<String> {
        let mut bytes = Vec::new();
        for &t in tokens {
            bytes.extend_from_slice(self.token_bytes(t)?);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Renders a conversation with the model's chat template.
    fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.chat_template().render(messages, add_generation_prompt)
    }

    /// Starts a conversation with its own KV cache.
    async fn new_session(&self, options: SessionOptions) -> Result<Box<dyn Session>>;
}

/// One conversation's KV cache on one model.
///
/// A session is a sequence of tokens already run through the model. `eval`
/// appends to it; `truncate` rolls it back, which is how a new turn reuses
/// the cache for the part of the prompt that has not changed.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait Session: Send {
    /// Maximum number of tokens the session can hold.
    fn context_length(&self) -> usize;

    /// The tokens currently in the KV cache, in order.
    fn tokens(&self) -> &[TokenId];

    /// Drops every cached token from position `len` on.
    fn truncate(&mut self, len: usize) -> Result<()>;

    /// How many tokens one `eval` call handles well; prefill is split into
    /// chunks of this size so that cancellation is checked between them.
    fn preferred_batch(&self) -> usize {
        512
    }

    /// Bytes this session holds on top of the model (KV cache, buffers).
    fn resident_bytes(&self) -> u64;

    /// Runs `tokens` through the model after the cached ones and returns
    /// the requested logits. Fails with [`EngineError::ContextOverflow`]
    /// (leaving the cache as it was) when they would not fit.
    async fn eval(&mut self, tokens: &[TokenId], logits: LogitsRequest) -> Result<Logits>;
}

/// Checks that `extra` more tokens fit after `cached` in `capacity`.
pub fn check_fits(cached: usize, extra: usize, capacity: usize) -> Result<()> {
    let needed = cached + extra;
    if needed > capacity {
        return Err(EngineError::ContextOverflow { needed, capacity });
    }
    Ok(())
}
