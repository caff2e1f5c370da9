//! Plain data that crosses the engine boundary.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

/// A token id in the model's vocabulary.
pub type TokenId = u32;

/// Where a model's bytes come from.
#[derive(Clone)]
pub enum ModelSource {
    /// A file on disk; engines memory-map it where they can.
    Path(PathBuf),
    /// Bytes already in memory (the browser, an app bundle, a download).
    /// `name` is only used in messages.
    Bytes { name: String, bytes: Arc<[u8]> },
}

impl ModelSource {
    /// A human-readable name for messages.
    pub fn display_name(&self) -> String {
        match self {
            Self::Path(p) => p.display().to_string(),
            Self::Bytes { name, .. } => name.clone(),
        }
    }
}

impl From<PathBuf> for ModelSource {
    fn from(p: PathBuf) -> Self {
        Self::Path(p)
    }
}

impl From<&Path> for ModelSource {
    fn from(p: &Path) -> Self {
        Self::Path(p.to_path_buf())
    }
}

impl fmt::Debug for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(p) => f.debug_tuple("Path").field(p).finish(),
            Self::Bytes { name, bytes } => f
                .debug_struct("Bytes")
                .field("name", name)
                .field("len", &bytes.len())
                .finish(),
        }
    }
}

/// The engines Arny has, by the ids configs and the command line use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum EngineKind {
    /// llama.cpp (`engine-gguf`).
    Gguf,
    /// ExecuTorch programs (`engine-pte`).
    Pte,
    /// Burn on wgpu or its CPU backend (`engine-burn-wgpu`).
    Burn,
}

impl EngineKind {
    pub const ALL: [Self; 3] = [Self::Gguf, Self::Pte, Self::Burn];

    /// The id, as [`crate::InferenceEngine::id`] returns it.
    pub fn id(self) -> &'static str {
        match self {
            Self::Gguf => "gguf",
            Self::Pte => "pte",
            Self::Burn => "burn",
        }
    }

    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.id() == id)
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// Which kind of device an engine should run on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum DeviceRequest {
    /// A GPU when the engine has one, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// A GPU or fail: an explicit request is never silently downgraded.
    Gpu,
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
        })
    }
}

/// Called with load progress in `[0, 1]`.
pub type ProgressFn = Arc<dyn Fn(f32) + Send + Sync>;

/// How to load a model.
#[derive(Clone)]
pub struct LoadOptions {
    /// Default context window of the model's sessions. `None`:
    /// [`crate::DEFAULT_CONTEXT`] or the most the model holds, if less; a
    /// value above that is an error (see [`crate::resolve_context`]).
    pub context_length: Option<u32>,
    /// Compute threads. `None`: the engine's default policy.
    pub threads: Option<u32>,
    /// Memory-map the file instead of reading it into RAM.
    pub use_mmap: bool,
    /// Default seed for sampling when a request does not set one.
    pub seed: u64,
    pub device: DeviceRequest,
    /// Progress while the weights load.
    pub progress: Option<ProgressFn>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            context_length: None,
            threads: None,
            use_mmap: true,
            seed: 0,
            device: DeviceRequest::Auto,
            progress: None,
        }
    }
}

impl fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadOptions")
            .field("context_length", &self.context_length)
            .field("threads", &self.threads)
            .field("use_mmap", &self.use_mmap)
            .field("seed", &self.seed)
            .field("device", &self.device)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// What an engine can do with a loaded model beyond generating text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub logits: bool,
    pub lora: bool,
    /// Constrained output ([`crate::Constraint`]): the shared generation
    /// loop does it for any engine that reports its tokens' bytes.
    pub grammar: bool,
    /// [`crate::Model::embed`] works.
    pub embeddings: bool,
}

/// Facts about a loaded model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Architecture name as the file states it (`llama`, ...).
    pub architecture: String,
    /// Free-form model name from the file's metadata, when present.
    pub name: Option<String>,
    pub parameters: u64,
    /// Weight format, e.g. `Q4_1`, `F16`, `8da4w`.
    pub quantization: String,
    pub vocab_size: u32,
    /// The context the model was trained for.
    pub trained_context_length: u32,
    /// The most tokens a session can hold: the trained context, or less
    /// where the engine has a hard limit (an ExecuTorch program's static
    /// KV cache).
    pub max_context_length: u32,
    /// The context sessions get by default.
    pub context_length: u32,
    /// Bytes the weights occupy (file-backed pages included when mapped).
    pub resident_bytes: u64,
    /// Size of the model file or buffer.
    pub file_bytes: u64,
    /// Engine id: `gguf`, `pte`, `burn`.
    pub engine: String,
    /// Device description, e.g. `cpu (1 thread)`.
    pub device: String,
    pub capabilities: Capabilities,
}

/// Special token ids the generation loop needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<TokenId>,
    pub eos: Option<TokenId>,
    /// Every token that ends generation (EOS, end-of-turn, ...).
    pub end_of_generation: Vec<TokenId>,
    /// Whether tokenizing a fresh prompt should prepend BOS.
    pub add_bos: bool,
}

impl SpecialTokens {
    pub fn is_end_of_generation(&self, token: TokenId) -> bool {
        self.end_of_generation.contains(&token)
    }

    /// The texts of BOS and EOS, which chat templates see as `bos_token`
    /// and `eos_token`, looked up with `bytes`; empty where the model has
    /// no such token.
    pub fn bos_eos_text<'a>(
        &self,
        bytes: impl Fn(TokenId) -> Option<&'a [u8]>,
    ) -> (String, String) {
        let text = |t: Option<TokenId>| {
            t.and_then(&bytes)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        (text(self.bos), text(self.eos))
    }
}

/// Who said a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// A cheap, cloneable flag that stops work at the next token boundary.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Which positions' logits an evaluation should return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsRequest {
    /// Only fill the KV cache.
    None,
    /// The last position's logits.
    Last,
    /// Logits for every evaluated position (teacher forcing).
    All,
}

/// Row-major `[rows, vocab]` logits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Logits {
    pub vocab: usize,
    pub data: Vec<f32>,
}

impl Logits {
    pub fn rows(&self) -> usize {
        self.data.len().checked_div(self.vocab).unwrap_or(0)
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }
    /// The last row; empty when there is none.
    pub fn last(&self) -> &[f32] {
        match self.rows() {
            0 => &[],
            n => self.row(n - 1),
        }
    }
}
