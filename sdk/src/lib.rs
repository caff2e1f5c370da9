//! Arny's SDK: what an app uses to answer questions on the device.
//!
//! An [`Assistant`] is built from a [`Manifest`] (TOML). For each request a
//! gateway picks a specialist (or the cloud); the specialist's model is
//! loaded on demand by the [`ModelManager`], which keeps the total under a
//! memory budget and unloads idle models; the answer streams back as text.
//! The engine of each model is named in the manifest, so app code does not
//! change when the engine does.
//!
//! ```no_run
//! # async fn run() -> Result<(), arny_sdk::SdkError> {
//! use arny_sdk::{Assistant, AskRequest};
//! let assistant = Assistant::builtin().await?;
//! let answer = assistant
//!     .ask(AskRequest::new("What is 15% of 80?"), |piece| print!("{piece}"))
//!     .await?;
//! eprintln!("answered by {}", answer.handler.describe());
//! # Ok(()) }
//! ```

mod assistant;
mod error;
mod events;
mod manager;
pub mod manifest;
mod request;

pub use arny_engine_api::{
    CancelToken, ChatMessage, Constraint, DeviceRequest, EngineKind, FinishReason, Role,
    SamplingParams, Usage,
};
pub use arny_router::{CLOUD, Decision, LabelScore};
pub use assistant::{
    Answer, AskRequest, Assistant, AssistantOptions, DEFAULT_MAX_TOKENS, Embeddings, Engines,
    Handler, Status, TokenLogprob, TopLogprob, gateway_training_data,
};
pub use error::{Result, SdkError};
pub use events::{Event, UnloadReason};
pub use manager::{AdapterRef, LoadedModel, ManagerStatus, ModelKey, ModelManager};
pub use manifest::Manifest;
pub use request::{AskOptions, SamplingOverrides};

#[cfg(feature = "cloud")]
pub use arny_cloud as cloud;
