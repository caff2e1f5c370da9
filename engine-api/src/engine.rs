//! The engine traits.
//!
//! The split follows what differs between engines and what does not. An
//! engine only has to load weights, tokenize, and run the model forward over
//! new tokens while keeping its KV cache ([`Session::eval`]). Everything
//! above that (templates, sampling, stop strings, streaming, cancellation,
//! timings) lives once in this crate, so every engine behaves the same.
//!
//! # The session contract
//!
//! Every engine's sessions follow these rules; each is checked by a case
//! of the conformance suite (`engine_tck!`), and the checks engines share
//! are the helpers at the end of this module, so no engine writes its own.
//!
//! 1. **Context.** A session holds at most [`Session::context_length`]
//!    tokens: `SessionOptions::context_length`, else the model's default
//!    ([`ModelInfo::context_length`]). A request of 0 or of more than the
//!    model can hold ([`ModelInfo::max_context_length`]) fails with
//!    [`EngineError::InvalidInput`]: nothing is silently clamped. See
//!    [`resolve_context`]; `LoadOptions::context_length` follows the same
//!    rule.
//! 2. **Tokens.** `eval` checks every token against the vocabulary before
//!    it runs anything ([`EngineError::InvalidInput`]), then that they fit
//!    ([`EngineError::ContextOverflow`]); either way the cache is left as it
//!    was. See [`check_eval`].
//! 3. **Nothing to do.** `eval(&[], _)` runs nothing, changes nothing and
//!    returns logits with no rows, whatever was asked for.
//! 4. **Truncation.** `truncate(len)` keeps the first `len` cached tokens;
//!    a `len` at or past the end is a no-op, as for `Vec::truncate`.
//! 5. **Failure.** An `eval` that fails for any reason leaves
//!    [`Session::tokens`] as it was before the call.
//! 6. **Threads.** `eval` is `async` in signature only on native targets:
//!    it runs its forward pass on the calling thread and returns when the
//!    pass is done. Callers that must not block (a UI thread, an async
//!    server) run it on a thread of their own. In a browser the future
//!    really yields (WebGPU readback, turns for the page's event loop).

use std::path::Path;
use std::sync::Arc;

use crate::chat_template::ChatTemplate;
use crate::{
    Adapter, ChatMessage, EngineError, LoadOptions, Logits, LogitsRequest, ModelInfo, ModelSource,
    Result, SpecialTokens, TokenId,
};

/// The context sessions get when neither the caller nor the model says
/// less: enough for a multi-turn chat, small enough for a phone's KV
/// budget.
pub const DEFAULT_CONTEXT: u32 = 4096;

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
    /// Overrides the model's default context length for this session; at
    /// most [`ModelInfo::max_context_length`] (see [`resolve_context`]).
    pub context_length: Option<u32>,
    /// A LoRA adapter this model loaded ([`Model::load_adapter`]): the
    /// session runs with it for its whole life. An engine without adapters,
    /// or an adapter from another model, is an error, never ignored.
    pub adapter: Option<Arc<dyn Adapter>>,
}

impl SessionOptions {
    /// For engines without adapter support: refuses a session that asks
    /// for one.
    pub fn refuse_adapter(&self, engine: &str) -> Result<()> {
        match &self.adapter {
            None => Ok(()),
            Some(a) => Err(EngineError::Unsupported(format!(
                "LoRA adapters on the {engine} engine (asked for {})",
                a.info().name
            ))),
        }
    }
}

/// Loaded weights plus tokenizer. Shared by any number of sessions.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait Model: Send + Sync {
    fn info(&self) -> &ModelInfo;

    fn special_tokens(&self) -> &SpecialTokens;

    /// The model's own chat template; `None` when the file carries none (a
    /// base model: plain completion, or a template the caller names).
    fn chat_template(&self) -> Option<&ChatTemplate>;

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

    /// Renders a conversation with the model's chat template;
    /// [`EngineError::Template`] when it has none.
    fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        match self.chat_template() {
            Some(t) => t.render(messages, add_generation_prompt),
            None => Err(crate::chat_template::no_template_error()),
        }
    }

    /// Starts a conversation with its own KV cache.
    async fn new_session(&self, options: SessionOptions) -> Result<Box<dyn Session>>;

    /// One embedding per text: the model's hidden states mean-pooled and
    /// L2-normalised. [`EngineError::Unsupported`] on engines that cannot
    /// (see [`crate::Capabilities::embeddings`]); an empty text is
    /// [`EngineError::InvalidInput`], one longer than the model holds
    /// [`EngineError::ContextOverflow`].
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let _ = texts;
        Err(EngineError::Unsupported(format!(
            "embeddings on the {} engine",
            self.info().engine
        )))
    }

    /// Loads a LoRA adapter (a GGUF LoRA file or its bytes) for this model;
    /// `scale` multiplies its effect (1.0: as trained). Sessions opened
    /// with it ([`SessionOptions::adapter`]) use it; the model itself is
    /// unchanged. Errors: [`EngineError::WrongFormat`] for a file that is
    /// not a LoRA adapter, [`EngineError::Corrupt`] for a truncated one,
    /// [`EngineError::Incompatible`] for one made for another model, and
    /// [`EngineError::Unsupported`] on engines without adapters (the
    /// default).
    async fn load_adapter(&self, source: ModelSource, scale: f32) -> Result<Arc<dyn Adapter>> {
        let _ = scale;
        Err(EngineError::Unsupported(format!(
            "LoRA adapters on the {} engine (asked for {})",
            self.info().engine,
            source.display_name()
        )))
    }
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

    /// Drops every cached token from position `len` on; a no-op when
    /// `len` is at or past the end.
    fn truncate(&mut self, len: usize) -> Result<()>;

    /// How many tokens one `eval` call handles well; prefill is split into
    /// chunks of this size so that cancellation is checked between them.
    fn preferred_batch(&self) -> usize {
        512
    }

    /// Bytes this session holds on top of the model (KV cache, buffers).
    fn resident_bytes(&self) -> u64;

    /// Runs `tokens` through the model after the cached ones and returns
    /// the requested logits, on the calling thread (see the module's
    /// contract). Fails with [`EngineError::InvalidInput`] for a token
    /// outside the vocabulary and [`EngineError::ContextOverflow`] when the
    /// tokens would not fit, leaving the cache as it was; no tokens is no
    /// work and no rows.
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

/// The checks every [`Session::eval`] makes before running anything, in
/// the contract's order: each token is in the vocabulary of `vocab`, then
/// the tokens fit after `cached` in `capacity`. `Ok(false)`: there are no
/// tokens, so there is nothing to run (return empty logits).
pub fn check_eval(
    tokens: &[TokenId],
    cached: usize,
    capacity: usize,
    vocab: usize,
) -> Result<bool> {
    check_tokens(tokens, vocab)?;
    check_fits(cached, tokens.len(), capacity)?;
    Ok(!tokens.is_empty())
}

/// Every token is below `vocab`.
pub fn check_tokens(tokens: &[TokenId], vocab: usize) -> Result<()> {
    match tokens.iter().find(|&&t| t as usize >= vocab) {
        Some(bad) => Err(EngineError::InvalidInput(format!(
            "token {bad} is outside the vocabulary of {vocab}"
        ))),
        None => Ok(()),
    }
}

/// The context a session (or a load) gets: `requested`, else `default`;
/// either way between 1 and `max`, the most the model can hold. A request
/// outside that range is an error naming both, never clamped.
pub fn resolve_context(requested: Option<u32>, default: u32, max: u32) -> Result<u32> {
    let ctx = requested.unwrap_or(default.min(max));
    if ctx == 0 || ctx > max {
        return Err(EngineError::InvalidInput(format!(
            "context length {ctx} is not in 1..={max}, the most this model holds"
        )));
    }
    Ok(ctx)
}

/// The size of the model file at `path`, after checking that it is one:
/// [`EngineError::NotFound`] when nothing is there, [`EngineError::NotAFile`]
/// for a directory or a device.
pub fn check_model_file(path: &Path) -> Result<u64> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(m.len()),
        Ok(_) => Err(EngineError::NotAFile(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(EngineError::NotFound(path.to_path_buf()))
        }
        Err(e) => Err(EngineError::io(path.display().to_string(), e)),
    }
}

/// How a CPU engine names where it runs, e.g. `cpu (2 threads)` or
/// `cpu (XNNPACK, 1 thread)`.
pub fn cpu_device(runtime: Option<&str>, threads: u32) -> String {
    let plural = if threads == 1 { "" } else { "s" };
    match runtime {
        Some(r) => format!("cpu ({r}, {threads} thread{plural})"),
        None => format!("cpu ({threads} thread{plural})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_resolved_or_refused() {
        assert_eq!(resolve_context(None, DEFAULT_CONTEXT, 8192).unwrap(), 4096);
        assert_eq!(resolve_context(None, DEFAULT_CONTEXT, 512).unwrap(), 512);
        assert_eq!(
            resolve_context(Some(8192), DEFAULT_CONTEXT, 8192).unwrap(),
            8192
        );
        for bad in [0, 8193] {
            assert!(matches!(
                resolve_context(Some(bad), DEFAULT_CONTEXT, 8192),
                Err(EngineError::InvalidInput(_))
            ));
        }
    }

    #[test]
    fn eval_checks_in_order() {
        assert!(!check_eval(&[], 10, 10, 5).unwrap());
        assert!(check_eval(&[4], 9, 10, 5).unwrap());
        // A bad token is reported before an overflow.
        assert!(matches!(
            check_eval(&[5, 1], 10, 10, 5),
            Err(EngineError::InvalidInput(_))
        ));
        assert!(matches!(
            check_eval(&[1, 1], 9, 10, 5),
            Err(EngineError::ContextOverflow {
                needed: 11,
                capacity: 10
            })
        ));
    }

    #[test]
    fn model_file_checks() {
        let dir = std::env::temp_dir();
        assert!(matches!(
            check_model_file(&dir),
            Err(EngineError::NotAFile(_))
        ));
        assert!(matches!(
            check_model_file(&dir.join("arny-no-such-model.gguf")),
            Err(EngineError::NotFound(_))
        ));
    }
}
