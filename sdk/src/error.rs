use std::sync::Arc;

use arny_engine_api::EngineError;

/// Everything the SDK can fail with. Each variant has a stable
/// [`SdkError::code`] for bindings and the HTTP server.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    #[error("{origin}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Manifest {
        origin: String,
        line: Option<usize>,
        message: String,
    },
    #[error("unknown specialist `{name}` (known: {known})")]
    UnknownSpecialist { name: String, known: String },
    #[error("model `{model}` needs the `{engine}` engine, which this build does not include")]
    EngineUnavailable { model: String, engine: String },
    #[error("model `{model}` failed to load: {source}")]
    Load {
        model: String,
        #[source]
        source: Arc<EngineError>,
    },
    #[error("adapter `{adapter}` of specialist `{specialist}` failed to load: {source}")]
    Adapter {
        specialist: String,
        adapter: String,
        #[source]
        source: Arc<EngineError>,
    },
    #[error("memory budget exceeded: `{model}` needs about {needed} bytes, {available} of the {budget}-byte budget can be freed now{}", if busy.is_empty() { String::new() } else { format!(" (busy: {})", busy.join(", ")) })]
    MemoryBudget {
        model: String,
        needed: u64,
        available: u64,
        budget: u64,
        busy: Vec<String>,
    },
    /// Waited for memory held by running work past the queue timeout.
    #[error("`{model}` waited {waited_ms} ms for memory and timed out ({reason})")]
    QueueTimeout {
        model: String,
        waited_ms: u64,
        /// What it was waiting for.
        reason: String,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Router(#[from] arny_router::RouterError),
    #[error("model store: {0}")]
    Store(#[from] arny_model_store::StoreError),
    #[cfg(feature = "cloud")]
    #[error(transparent)]
    Cloud(#[from] arny_cloud::CloudError),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl SdkError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Manifest { .. } => "manifest",
            Self::UnknownSpecialist { .. } => "unknown_specialist",
            Self::EngineUnavailable { .. } => "engine_unavailable",
            Self::Load { source, .. } | Self::Adapter { source, .. } => source.code(),
            Self::MemoryBudget { .. } => "memory_budget_exceeded",
            Self::QueueTimeout { .. } => "queue_timeout",
            Self::Engine(e) => e.code(),
            Self::Router(_) => "router",
            Self::Store(_) => "model_store",
            #[cfg(feature = "cloud")]
            Self::Cloud(e) => e.code(),
            Self::InvalidRequest(_) => "invalid_request",
        }
    }
}

pub type Result<T, E = SdkError> = std::result::Result<T, E>;
