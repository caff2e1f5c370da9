//! # arny-engine-gguf
//!
//! Arny's llama.cpp engine: GGUF models on the CPU through `llama-cpp-2`.
//!
//! llama.cpp owns the weights, the tokenizer and the KV cache; Arny's shared
//! loop in `arny-engine-api` owns sampling and everything above it, so this
//! crate is a thin, careful adapter:
//!
//! * files are checked before llama.cpp sees them (missing, directory,
//!   foreign format), and llama.cpp's own error text is carried into the
//!   typed error when it rejects a file;
//! * llama.cpp's logs go to `tracing` under the target `llama.cpp`;
//! * generation can only stop between tokens: llama.cpp has no safe abort
//!   hook, so cancellation is checked before each decode.

mod adapter;
mod backend;
mod embed;
mod loaded;
mod model;
mod session;
mod validate;

pub use adapter::GgufAdapter;
/// The thread policy every CPU engine shares (see `arny_engine_api`).
pub use arny_engine_api::default_threads;
pub use backend::{backend, last_llama_error};
pub use loaded::ModelRef;
pub use model::{GgufEngine, GgufModel};

/// The engine id used in configs and on the command line.
pub const ENGINE_ID: &str = "gguf";

/// Re-exported for benchmarks that compare against raw llama.cpp calls.
pub use llama_cpp_2;
