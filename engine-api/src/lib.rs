//! # arny-engine-api
//!
//! The contract between Arny's SDK and its inference engines, and the parts
//! of inference that must behave identically on every engine.
//!
//! * [`InferenceEngine`] loads a [`Model`]; a model opens [`Session`]s, each
//!   with its own KV cache. Engines implement only these three traits.
//! * [`Generation`] turns a session into a stream of [`TokenEvent`]s with
//!   the shared [`Sampler`], stop strings, UTF-8-safe pieces, cancellation
//!   and timings.
//! * [`Constraint`] holds generated text to a JSON Schema, a regex or a
//!   Lark grammar, through `llguidance` masks applied by the sampler.
//! * [`ChatTemplate`] renders conversations with the model's own Jinja
//!   template in a sandbox.
//!
//! This crate depends on no engine and builds for `wasm32-unknown-unknown`.

mod adapter;
mod chat_template;
mod constraint;
mod engine;
mod error;
mod generate;
mod memory;
pub mod sampler;
mod text;
mod threads;
mod types;

pub use adapter::{Adapter, AdapterInfo, adapter_for_model, check_adapter_scale, downcast_adapter};
pub use chat_template::{
    BuiltinTemplate, ChatTemplate, TemplateOrigin, no_template_error, render_conversation,
};
pub use constraint::{Constraint, ConstraintState, TokenMask};
pub use engine::{
    DEFAULT_CONTEXT, InferenceEngine, Model, Session, SessionOptions, check_eval, check_fits,
    check_model_file, check_tokens, cpu_device, resolve_context,
};
pub use error::{EngineError, Result};
pub use generate::{
    Completion, FinishReason, GenerateRequest, Generation, GenerationEvent, MAX_TOP_LOGPROBS,
    Prompt, TokenEvent, Usage, generate, next_token_logits, prompt_tokens, teacher_forced_logits,
};
pub use memory::release_free_heap;
pub use sampler::{Sampler, SamplingParams};
pub use text::{StopMatcher, StopScan, Utf8Stream};
pub use threads::default_threads;
pub use types::{
    CancelToken, Capabilities, ChatMessage, DeviceRequest, EngineKind, LoadOptions, Logits,
    LogitsRequest, ModelInfo, ModelSource, ProgressFn, Role, SpecialTokens, TokenId,
};

/// A scripted in-memory engine for fast unit tests of what sits above the
/// engine traits (the generation loop, the SDK's model manager).
#[cfg(any(test, feature = "mock"))]
pub mod mock;
