//! Loading a GGUF file into a [`GgufModel`].

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;

use arny_engine_api::{
    Adapter, Capabilities, ChatTemplate, DEFAULT_CONTEXT, DeviceRequest, EngineError,
    InferenceEngine, LoadOptions, Model, ModelInfo, ModelSource, Result, Session, SessionOptions,
    SpecialTokens, TokenId, cpu_device, resolve_context,
};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

use crate::adapter::GgufAdapter;
use crate::backend::{backend, clear_last_error, last_llama_error};
use crate::loaded::{Inner, ModelRef, SharedModel};
use crate::session::GgufSession;
use crate::validate::{check_gguf_bytes, check_gguf_file};
use crate::{ENGINE_ID, default_threads};

/// The llama.cpp engine. Stateless: every model it loads is independent.
#[derive(Debug, Default, Clone, Copy)]
pub struct GgufEngine;

impl GgufEngine {
    pub fn new() -> Self {
        Self
    }

    /// Loads a model from a path without going through the async trait.
    pub fn load_path(&self, path: &Path, options: &LoadOptions) -> Result<GgufModel> {
        let (file_bytes, header) = check_gguf_file(path)?;
        let checked = Checked {
            file_bytes,
            header,
            source_name: path.display().to_string(),
        };
        GgufModel::load(path, checked, None, options)
    }
}

#[async_trait::async_trait]
impl InferenceEngine for GgufEngine {
    fn id(&self) -> &'static str {
        ENGINE_ID
    }

    async fn load(&self, source: ModelSource, options: LoadOptions) -> Result<Arc<dyn Model>> {
        let model = match source {
            ModelSource::Path(path) => self.load_path(&path, &options)?,
            ModelSource::Bytes { name, bytes } => {
                // Checked in memory, before anything is written to disk.
                let header = check_gguf_bytes(&bytes, &name)?;
                let checked = Checked {
                    file_bytes: bytes.len() as u64,
                    header,
                    source_name: name,
                };
                // llama.cpp reads models from files only: spill to a temp
                // file that lives exactly as long as the model.
                let mut tmp = tempfile::Builder::new()
                    .prefix("arny-model-")
                    .suffix(".gguf")
                    .tempfile()
                    .map_err(|e| EngineError::io("create temp file", e))?;
                std::io::Write::write_all(&mut tmp, &bytes)
                    .map_err(|e| EngineError::io("write temp file", e))?;
                let path = tmp.path().to_path_buf();
                GgufModel::load(&path, checked, Some(tmp), &options)?
            }
        };
        Ok(Arc::new(model))
    }
}

/// What validation established about a model before llama.cpp loads it.
struct Checked {
    file_bytes: u64,
    /// The tensor directory, for checking adapters.
    header: arny_gguf::GgufFile,
    /// The user's name for the model (a path, or the name given with bytes).
    source_name: String,
}

/// A GGUF model loaded by llama.cpp. Cheap to clone; sessions share it.
#[derive(Clone)]
pub struct GgufModel {
    pub(crate) inner: Arc<Inner>,
}

impl GgufModel {
    /// Loads a file that `validate` has already accepted.
    fn load(
        path: &Path,
        checked: Checked,
        spill: Option<tempfile::NamedTempFile>,
        options: &LoadOptions,
    ) -> Result<Self> {
        if options.device == DeviceRequest::Gpu {
            return Err(EngineError::Unsupported(
                "the gguf engine runs on the CPU; use --device cpu or auto".into(),
            ));
        }
        let Checked {
            file_bytes,
            header,
            source_name,
        } = checked;
        let backend = backend()?;
        let mut params = LlamaModelParams::default().with_use_mmap(options.use_mmap);
        if let Some(progress) = options.progress.clone() {
            params = params.with_progress_callback(move |p| {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| progress(p)));
                true
            });
        }
        clear_last_error();
        let model = LlamaModel::load_from_file(backend, path, &params).map_err(|e| {
            let reason = last_llama_error().unwrap_or_else(|| e.to_string());
            classify_load_error(source_name.clone(), reason)
        })?;

        let threads = options.threads.unwrap_or_else(default_threads).max(1);
        let trained = model.n_ctx_train();
        let context_length = resolve_context(options.context_length, DEFAULT_CONTEXT, trained)?;

        let vocab = model.vocab();
        let n_vocab = u32::try_from(model.n_vocab()).unwrap_or(0);
        let pieces: Vec<Vec<u8>> = (0..n_vocab)
            .map(|t| vocab.token_to_piece(LlamaToken(t as i32), true, None))
            .collect();
        let valid = |t: LlamaToken| (t.0 >= 0 && (t.0 as u32) < n_vocab).then_some(t.0 as TokenId);
        let special = SpecialTokens {
            bos: valid(vocab.bos()),
            eos: valid(vocab.eos()),
            end_of_generation: (0..n_vocab)
                .filter(|&t| vocab.is_eog(LlamaToken(t as i32)))
                .collect(),
            add_bos: vocab.should_add_bos(),
        };
        let template_src = model
            .chat_template(None)
            .ok()
            .and_then(|t| t.to_string().ok());
        let (bos, eos) = special.bos_eos_text(|t| pieces.get(t as usize).map(Vec::as_slice));
        let template = ChatTemplate::from_model(template_src.as_deref(), &bos, &eos)?;

        let meta = |k: &str| model.meta_val_str(k).ok();
        let architecture = meta("general.architecture").unwrap_or_else(|| "unknown".into());
        let quantization = meta("general.file_type")
            .and_then(|v| v.parse::<u32>().ok())
            .map(file_type_name)
            .unwrap_or_else(|| "unknown".into());
        let info = ModelInfo {
            architecture,
            name: meta("general.name"),
            parameters: model.n_params(),
            quantization,
            vocab_size: n_vocab,
            trained_context_length: trained,
            max_context_length: trained,
            context_length,
            resident_bytes: model.size(),
            file_bytes,
            engine: ENGINE_ID.into(),
            device: cpu_device(None, threads),
            capabilities: Capabilities {
                logits: true,
                lora: true,
                grammar: true,
                embeddings: true,
            },
        };
        tracing::info!(
            source = %source_name,
            arch = %info.architecture,
            params = info.parameters,
            quant = %info.quantization,
            threads,
            "loaded GGUF model"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                model: SharedModel::new(model),
                threads,
                pieces,
                info,
                special,
                template,
                seed: options.seed,
                header,
                _spill: spill,
                _trim: Default::default(),
            }),
        })
    }

    /// The underlying llama.cpp model, for callers that need raw access;
    /// adapter loads wait while the borrow is held.
    pub fn llama_model(&self) -> ModelRef<'_> {
        self.inner.model.read()
    }

    /// The thread count sessions of this model use.
    pub fn threads(&self) -> u32 {
        self.inner.threads
    }

    /// Creates a session without going through the async trait.
    pub fn session(&self, options: &SessionOptions) -> Result<GgufSession> {
        let info = &self.inner.info;
        let n_ctx = resolve_context(
            options.context_length,
            info.context_length,
            info.max_context_length,
        )?;
        let adapter = match &options.adapter {
            None => None,
            Some(a) => Some(GgufAdapter::for_model(a, &self.inner)?),
        };
        GgufSession::new(
            self.inner.clone(),
            NonZeroU32::new(n_ctx).unwrap_or(NonZeroU32::MIN),
            adapter,
        )
    }

    /// Loads a GGUF LoRA adapter without going through the async trait.
    pub fn adapter(&self, source: ModelSource, scale: f32) -> Result<Arc<GgufAdapter>> {
        GgufAdapter::load(&self.inner, source, scale).map(Arc::new)
    }
}

#[async_trait::async_trait]
impl Model for GgufModel {
    fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    fn special_tokens(&self) -> &SpecialTokens {
        &self.inner.special
    }

    fn chat_template(&self) -> Option<&ChatTemplate> {
        self.inner.template.as_ref()
    }

    fn default_seed(&self) -> u64 {
        self.inner.seed
    }

    fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<TokenId>> {
        let toks =
            self.inner
                .model
                .read()
                .vocab()
                .tokenize(text.as_bytes(), add_special, parse_special);
        toks.into_iter()
            .map(|t| {
                u32::try_from(t.0).map_err(|_| {
                    EngineError::engine(ENGINE_ID, format!("tokenizer returned {}", t.0))
                })
            })
            .collect()
    }

    fn token_bytes(&self, token: TokenId) -> Result<&[u8]> {
        self.inner
            .pieces
            .get(token as usize)
            .map(Vec::as_slice)
            .ok_or_else(|| {
                EngineError::InvalidInput(format!(
                    "token {token} is outside the vocabulary of {}",
                    self.inner.pieces.len()
                ))
            })
    }

    async fn new_session(&self, options: SessionOptions) -> Result<Box<dyn Session>> {
        Ok(Box::new(self.session(&options)?))
    }

    async fn load_adapter(&self, source: ModelSource, scale: f32) -> Result<Arc<dyn Adapter>> {
        Ok(self.adapter(source, scale)?)
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        crate::embed::embed(&self.inner, texts)
    }
}

fn classify_load_error(source_name: String, reason: String) -> EngineError {
    let lower = reason.to_lowercase();
    if lower.contains("unknown model architecture") {
        let arch = reason
            .split('\'')
            .nth(1)
            .unwrap_or(reason.as_str())
            .to_string();
        return EngineError::UnsupportedArchitecture(arch);
    }
    if lower.contains("invalid ggml type") || lower.contains("unsupported type") {
        return EngineError::UnsupportedQuantization(reason);
    }
    EngineError::Corrupt {
        source_name,
        reason: format!("llama.cpp could not load it: {reason}"),
    }
}

/// Names of llama.cpp's `llama_ftype` values.
fn file_type_name(ftype: u32) -> String {
    let name = match ftype {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        other => return format!("ftype {other}"),
    };
    name.to_string()
}
