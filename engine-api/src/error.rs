//! The one error type every engine returns.
//!
//! Callers match on the variant, never on the message: the SDK retries,
//! falls back or reports based on it, and the bindings map each variant to a
//! stable error code.

use std::path::PathBuf;

/// Result alias used across the engine API.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Everything that can go wrong between "here is a model file" and "here is
/// the last token".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The path does not exist.
    #[error("model file not found: {}", .0.display())]
    NotFound(PathBuf),

    /// The path exists but is a directory or something else that is not a
    /// regular file.
    #[error("not a regular file: {}", .0.display())]
    NotAFile(PathBuf),

    /// The file is readable but is not a model this engine understands.
    #[error("{source_name}: not a {expected} model ({reason})")]
    WrongFormat {
        source_name: String,
        expected: &'static str,
        reason: String,
    },

    /// The file has the right format but is truncated or internally
    /// inconsistent.
    #[error("{source_name}: corrupt or truncated model ({reason})")]
    Corrupt { source_name: String, reason: String },

    /// The file is valid but does not fit what it is used with: a LoRA
    /// adapter for another architecture or shape, an adapter loaded by
    /// another model.
    #[error("{source_name}: incompatible ({reason})")]
    Incompatible { source_name: String, reason: String },

    /// The model's architecture is not implemented by this engine.
    #[error("unsupported architecture `{0}`")]
    UnsupportedArchitecture(String),

    /// The weights use a quantization this engine cannot run.
    #[error("unsupported quantization `{0}`")]
    UnsupportedQuantization(String),

    /// The engine cannot do what was asked (a capability it lacks, a device
    /// it has no backend for).
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// The tokens would not fit in the session's context window.
    #[error("context overflow: {needed} tokens needed, the context holds {capacity}")]
    ContextOverflow { needed: usize, capacity: usize },

    /// The operation was cancelled through its [`crate::CancelToken`].
    #[error("cancelled")]
    Cancelled,

    /// The request itself is malformed (empty prompt, bad sampling value).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// An output constraint (JSON Schema, regex, grammar) cannot be
    /// enforced: a keyword the compiler does not support, a malformed
    /// pattern. Reported before anything is generated.
    #[error("invalid constraint: {0}")]
    InvalidConstraint(String),

    /// The constraint's matcher failed during generation. Generation stops
    /// here; it never continues unconstrained.
    #[error("constraint failed: {0}")]
    ConstraintFailed(String),

    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),

    /// An I/O error while reading a model.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The engine's own runtime failed; carries its message verbatim.
    #[error("{engine} engine: {message}")]
    Engine {
        engine: &'static str,
        message: String,
    },
}

impl EngineError {
    /// A short stable identifier for the variant, used as an error code by
    /// the CLI's JSON output and the bindings.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::NotAFile(_) => "not_a_file",
            Self::WrongFormat { .. } => "wrong_format",
            Self::Corrupt { .. } => "corrupt",
            Self::Incompatible { .. } => "incompatible",
            Self::UnsupportedArchitecture(_) => "unsupported_architecture",
            Self::UnsupportedQuantization(_) => "unsupported_quantization",
            Self::Unsupported(_) => "unsupported",
            Self::ContextOverflow { .. } => "context_overflow",
            Self::Cancelled => "cancelled",
            Self::InvalidInput(_) => "invalid_input",
            Self::InvalidConstraint(_) => "invalid_constraint",
            Self::ConstraintFailed(_) => "constraint_failed",
            Self::Template(_) => "template",
            Self::Io { .. } => "io",
            Self::Engine { .. } => "engine",
        }
    }

    /// Shorthand for an engine failure.
    pub fn engine(engine: &'static str, message: impl Into<String>) -> Self {
        Self::Engine {
            engine,
            message: message.into(),
        }
    }

    /// Shorthand for an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
