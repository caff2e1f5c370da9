//! `engine-burn-wgpu`: decoder-only GGUF models (Llama, Qwen2/3, Gemma 3, Phi-3) on Burn, pure Rust.
//!
//! Two backends behind one engine, chosen at load time: Burn's CPU backend
//! (`flex`) and wgpu (Vulkan, Metal, DX12; WebGPU in a browser). Weights
//! come from the same GGUF files llama.cpp reads. On the CPU they stay in
//! the file's blocks, multiplied by `arny-qmatmul`'s kernels; on wgpu the
//! same blocks are copied to the GPU and multiplied by `arny-qmatmul-gpu`'s
//! shaders (f16 and f32 weights remain as options). The
//! tokenizer is built from the file's vocabulary (`arny-tokenizer`) and
//! gives llama.cpp's token ids. Sampling, templates and streaming are
//! engine-api's, as for every engine.

mod adapter;
mod decoder;

use std::sync::{Arc, Mutex};

use arny_engine_api::{
    Adapter, Capabilities, ChatTemplate, DEFAULT_CONTEXT, DeviceRequest, EngineError,
    InferenceEngine, LoadOptions, Logits, LogitsRequest, Model, ModelInfo, ModelSource, Result,
    Session, SessionOptions, SpecialTokens, TokenId, check_eval, check_model_file, resolve_context,
};
use arny_gguf::GgufFile;
use arny_tokenizer::Tokenizer;
use burn::tensor::Device;

pub use adapter::BurnAdapter;
pub use decoder::{Activation, Arch, Config, Decoder, KvCache, Lora, Rope, WeightPrecision};

/// The id manifests and the CLI use.
pub const ENGINE_ID: &str = "burn";

/// Tokens per forward pass during prefill: bounds the attention matrix.
const BATCH: usize = 256;

/// Which backend a model runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    Wgpu,
}

#[derive(Debug, Default, Clone)]
pub struct BurnEngine {
    precision: Option<WeightPrecision>,
}

impl BurnEngine {
    /// Weights packed as the file stores them, on both backends.
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds weights in `precision` whatever the device (f16 on the CPU
    /// backend is slower than f32: it has no f16 arithmetic). A wgpu
    /// adapter without shader f16 refuses `F16`.
    pub fn with_precision(precision: WeightPrecision) -> Self {
        Self {
            precision: Some(precision),
        }
    }
}

/// The wgpu runtime, initialised once per process: Burn registers one
/// runtime per adapter selector and refuses a second `init`, so every model
/// shares this device (and a failure is remembered rather than retried).
#[derive(Clone)]
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
struct Gpu {
    device: Device,
    /// Adapter name, graphics API and type, for `ModelInfo::device`.
    name: String,
    /// A software rasterizer such as lavapipe or SwiftShader.
    software: bool,
    /// The device runs f16 arithmetic in shaders.
    f16: bool,
}

#[cfg(feature = "wgpu")]
static GPU: Mutex<Option<std::result::Result<Gpu, String>>> = Mutex::new(None);

#[cfg(feature = "wgpu")]
fn describe(device: Device, setup: &burn::tensor::wgpu::WgpuSetup) -> Gpu {
    use burn::tensor::wgpu::wgpu::DeviceType;
    let info = setup.adapter.get_info();
    let software = info.device_type == DeviceType::Cpu;
    let f16 = setup
        .device
        .features()
        .contains(burn::tensor::wgpu::wgpu::Features::SHADER_F16);
    Gpu {
        device,
        f16,
        name: format!(
            "wgpu: {} ({:?}, {:?})",
            info.name, info.backend, info.device_type
        ),
        software,
    }
}

#[cfg(all(feature = "wgpu", not(target_family = "wasm")))]
async fn gpu() -> std::result::Result<Gpu, String> {
    let mut slot = GPU.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = slot.as_ref() {
        return r.clone();
    }
    let r = Device::wgpu_options()
        .init_with_setup()
        .map(|(d, setup)| describe(d, &setup))
        .map_err(|e| e.to_string());
    match &r {
        Ok(g) => tracing::info!(adapter = %g.name, software = g.software, "wgpu ready"),
        Err(e) => tracing::info!(error = %e, "no wgpu adapter"),
    }
    *slot = Some(r.clone());
    r
}

/// In a browser the adapter can only be requested asynchronously. The page
/// is single-threaded, so the lock is never held across the await.
#[cfg(all(feature = "wgpu", target_family = "wasm"))]
async fn gpu() -> std::result::Result<Gpu, String> {
    if let Some(r) = GPU.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return r.clone();
    }
    let r = Device::wgpu_options()
        .init_with_setup_async()
        .await
        .map(|(d, setup)| describe(d, &setup))
        .map_err(|e| e.to_string());
    *GPU.lock().unwrap_or_else(|e| e.into_inner()) = Some(r.clone());
    r
}

/// A build for the CPU alone: the threaded page build, where wgpu's
/// WebGPU types cannot cross threads and Burn's wgpu runtime needs them to.
#[cfg(not(feature = "wgpu"))]
async fn gpu() -> std::result::Result<Gpu, String> {
    Err(
        "this build of the Burn engine has no wgpu backend (built without its `wgpu` feature)"
            .into(),
    )
}

/// Where a model runs.
struct Placement {
    device: Device,
    backend: Backend,
    /// For `ModelInfo::device`.
    name: String,
    /// Shaders have f16 arithmetic.
    f16: bool,
}

impl Placement {
    fn cpu() -> Self {
        Self {
            device: Device::flex(),
            backend: Backend::Cpu,
            name: "cpu (burn flex)".into(),
            f16: false,
        }
    }

    fn gpu(g: Gpu) -> Self {
        Self {
            device: g.device,
            backend: Backend::Wgpu,
            name: g.name,
            f16: g.f16,
        }
    }
}

/// Whether wgpu sees a hardware adapter, asked without creating a device,
/// so that `Auto` on a machine with only a software rasterizer never starts
/// Burn's wgpu runtime: it would hold a device, its pools and the driver for
/// the life of the process (65 MiB of RSS with lavapipe, measured beside a
/// CPU model) while the model runs on the CPU. In a browser the page's
/// adapter is the only one and is asked for by `gpu` itself.
#[cfg(all(feature = "wgpu", not(target_family = "wasm")))]
async fn hardware_adapter() -> bool {
    use burn::tensor::wgpu::wgpu;
    // Asked once per process: adapters do not come and go between loads.
    static HARDWARE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if let Some(&h) = HARDWARE.get() {
        return h;
    }
    // Even enumerating adapters loads every Vulkan driver, lavapipe's LLVM
    // among them (16 MiB of RSS that stays). On Linux a GPU that Vulkan or
    // GL can drive has a DRM render node or NVIDIA's device file, so where
    // neither exists there is nothing to ask.
    #[cfg(target_os = "linux")]
    {
        let render_node = std::fs::read_dir("/dev/dri").is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
        });
        if !render_node && !std::path::Path::new("/dev/nvidia0").exists() {
            return *HARDWARE.get_or_init(|| false);
        }
    }
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
    let hardware = adapters
        .iter()
        .any(|a| a.get_info().device_type != wgpu::DeviceType::Cpu);
    tracing::debug!(adapters = adapters.len(), hardware, "wgpu adapters");
    *HARDWARE.get_or_init(|| hardware)
}

/// In a page the adapter is asked for by `gpu` itself; a build without
/// wgpu has none.
#[cfg(any(target_family = "wasm", not(feature = "wgpu")))]
async fn hardware_adapter() -> bool {
    cfg!(feature = "wgpu")
}

/// The device for a request. `Auto` takes wgpu only on a hardware adapter:
/// a software one (lavapipe) is several times slower than the CPU backend.
/// `Gpu` is honoured on any wgpu adapter, software included, so that the
/// wgpu path can be exercised on machines without a GPU; the adapter's type
/// is in the device name for anyone reading `ModelInfo`.
async fn place(request: DeviceRequest) -> Result<Placement> {
    match request {
        DeviceRequest::Cpu => Ok(Placement::cpu()),
        DeviceRequest::Auto if !hardware_adapter().await => Ok(Placement::cpu()),
        DeviceRequest::Auto => Ok(match gpu().await {
            Ok(g) if !g.software => Placement::gpu(g),
            _ => Placement::cpu(),
        }),
        DeviceRequest::Gpu => match gpu().await {
            Ok(g) => Ok(Placement::gpu(g)),
            Err(e) => Err(EngineError::Unsupported(format!(
                "a GPU was requested but wgpu found no usable adapter: {e}"
            ))),
        },
    }
}

/// The file's bytes and a name for messages.
fn read(source: &ModelSource) -> Result<(Arc<[u8]>, String)> {
    match source {
        ModelSource::Path(p) => {
            check_model_file(p)?;
            let io = |e| EngineError::io(format!("read {}", p.display()), e);
            // Read straight into the shared buffer: `Vec` into `Arc<[u8]>`
            // would copy, and hold the model twice at its peak.
            let mut file = std::fs::File::open(p).map_err(io)?;
            let len = file.metadata().map_err(io)?.len();
            let len = usize::try_from(len)
                .map_err(|_| EngineError::InvalidInput(format!("{} is too large", p.display())))?;
            // Zeroed by the allocator (fresh pages from the OS for a buffer
            // this size), not by a pass over it.
            // SAFETY: zero bytes are valid `u8`s.
            let mut bytes: Arc<[u8]> = unsafe { Arc::new_zeroed_slice(len).assume_init() };
            let buf = Arc::get_mut(&mut bytes).expect("a new buffer has one owner");
            std::io::Read::read_exact(&mut file, buf).map_err(io)?;
            Ok((bytes, p.display().to_string()))
        }
        ModelSource::Bytes { name, bytes } => Ok((bytes.clone(), name.clone())),
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
impl InferenceEngine for BurnEngine {
    fn id(&self) -> &'static str {
        ENGINE_ID
    }

    async fn load(&self, source: ModelSource, options: LoadOptions) -> Result<Arc<dyn Model>> {
        let (bytes, name) = read(&source)?;
        let file = GgufFile::from_bytes(&bytes).map_err(|e| e.into_engine_error(&name))?;
        let tokenizer = Tokenizer::from_gguf(&file).map_err(|e| e.into_engine_error(&name))?;
        let placement = place(options.device).await?;
        let precision = self.precision.unwrap_or(WeightPrecision::Packed);
        if precision == WeightPrecision::F16 && placement.backend == Backend::Wgpu && !placement.f16
        {
            return Err(EngineError::Unsupported(format!(
                "f16 weights: the adapter ({}) has no shader f16",
                placement.name
            )));
        }
        let report = |p: f32| {
            if let Some(f) = &options.progress {
                f(p);
            }
        };
        let on_cpu = placement.backend == Backend::Cpu;
        let llama = Decoder::load(
            &file,
            &bytes,
            &name,
            (&placement.device, on_cpu),
            precision,
            &report,
        )?;
        if tokenizer.vocab_size() != llama.cfg.vocab {
            return Err(EngineError::Corrupt {
                source_name: name,
                reason: format!(
                    "{} tokens but {} embedding rows",
                    tokenizer.vocab_size(),
                    llama.cfg.vocab
                ),
            });
        }
        let special = tokenizer.special_tokens(&file, llama.cfg.vocab);
        let (bos, eos) = special.bos_eos_text(|t| tokenizer.token_bytes(t));
        let template =
            ChatTemplate::from_model(file.get_str("tokenizer.chat_template"), &bos, &eos)?;
        let mut info = model_info(&file, &llama, &placement, precision, &options, bytes.len())?;
        info.resident_bytes += tokenizer.heap_bytes() + working_set_bytes(&llama.cfg);
        // The load's transient buffers (the parsed header, the tokenizer's
        // build) go back to the system, so RSS is what the model holds.
        arny_engine_api::release_free_heap();
        #[cfg(not(target_family = "wasm"))]
        let pool = thread_pool(placement.backend, options.threads)?;
        tracing::info!(model = %name, backend = ?placement.backend, ?precision, "burn model loaded");
        Ok(Arc::new(BurnModel(Arc::new(Inner {
            header: file.into_directory(),
            llama,
            tokenizer,
            template,
            special,
            info,
            #[cfg(target_family = "wasm")]
            backend: placement.backend,
            lock: Mutex::new(()),
            #[cfg(not(target_family = "wasm"))]
            pool,
        }))))
    }
}

/// What one forward pass of a `BATCH`-token chunk allocates on top of the
/// weights and the KV cache (passes of one model take turns, so this is
/// per model): the residual stream, norms, Q/K/V and attention outputs, the
/// MLP's intermediate tensors, their 8-bit copies for the packed kernels,
/// and one row of logits. Counted from the shapes; on SmolLM2 it is 13 MB
/// where the peak RSS of a 256-token prefill rose 11.5 MB over the loaded
/// model (measured with `arny bench`).
fn working_set_bytes(c: &decoder::Config) -> u64 {
    let q = c.n_head * c.head_dim;
    let kv = c.n_head_kv * c.head_dim;
    let per_token = 8 * c.n_embd + 4 * c.n_ff + 2 * (q + 2 * kv);
    (4 * (BATCH * per_token + 2 * c.vocab)) as u64
}

fn model_info(
    file: &GgufFile,
    llama: &Decoder,
    placement: &Placement,
    precision: WeightPrecision,
    options: &LoadOptions,
    file_bytes: usize,
) -> Result<ModelInfo> {
    let trained = llama.cfg.context_length as u32;
    let context_length = resolve_context(options.context_length, DEFAULT_CONTEXT, trained)?;
    Ok(ModelInfo {
        architecture: file.architecture().unwrap_or("llama").into(),
        name: file.get_str("general.name").map(str::to_string),
        parameters: file.tensors.iter().map(|t| t.elements()).sum(),
        quantization: file
            .tensor("blk.0.ffn_down.weight")
            .and_then(|t| t.type_name())
            .unwrap_or("F32")
            .to_string(),
        vocab_size: llama.cfg.vocab as u32,
        trained_context_length: trained,
        max_context_length: trained,
        context_length,
        resident_bytes: llama.resident_bytes,
        file_bytes: file_bytes as u64,
        engine: ENGINE_ID.into(),
        device: match precision {
            WeightPrecision::Packed => format!(
                "{}, packed {} weights ({} kernels)",
                placement.name,
                llama.packed_types.join("/"),
                match placement.backend {
                    Backend::Cpu => arny_qmatmul::Kernel::detect().name(),
                    Backend::Wgpu => "CubeCL",
                }
            ),
            p => format!("{}, {p:?} weights", placement.name),
        },
        capabilities: Capabilities {
            logits: true,
            lora: true,
            grammar: true,
            ..Capabilities::default()
        },
    })
}

/// The CPU backend's own threads when the caller set a count; `None`:
/// rayon's global pool (every core), or a GPU.
#[cfg(not(target_family = "wasm"))]
fn thread_pool(backend: Backend, threads: Option<u32>) -> Result<Option<rayon::ThreadPool>> {
    match (backend, threads) {
        (Backend::Cpu, Some(n)) => rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1) as usize)
            .thread_name(|i| format!("arny-burn-{i}"))
            .build()
            .map(Some)
            .map_err(|e| EngineError::engine(ENGINE_ID, format!("thread pool: {e}"))),
        _ => Ok(None),
    }
}

struct Inner {
    /// The file's architecture and tensor directory, that adapters are
    /// checked against.
    header: GgufFile,
    llama: Decoder,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    special: SpecialTokens,
    info: ModelInfo,
    #[cfg(target_family = "wasm")]
    backend: Backend,
    /// One forward pass at a time per model: backends queue work anyway,
    /// and the CPU backend already uses every core.
    lock: Mutex<()>,
    /// The CPU backend's threads when the caller set a count; otherwise
    /// rayon's global pool (every core).
    #[cfg(not(target_family = "wasm"))]
    pool: Option<rayon::ThreadPool>,
}

impl Inner {
    fn forward(
        &self,
        tokens: &[TokenId],
        cache: &mut KvCache,
        rows: usize,
        lora: Option<&Lora>,
    ) -> burn::tensor::Tensor<2> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        #[cfg(not(target_family = "wasm"))]
        if let Some(pool) = &self.pool {
            return pool.install(|| self.llama.forward(tokens, cache, rows, lora));
        }
        self.llama.forward(tokens, cache, rows, lora)
    }
}

pub struct BurnModel(Arc<Inner>);

#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
impl Model for BurnModel {
    fn info(&self) -> &ModelInfo {
        &self.0.info
    }

    fn special_tokens(&self) -> &SpecialTokens {
        &self.0.special
    }

    fn chat_template(&self) -> Option<&ChatTemplate> {
        self.0.template.as_ref()
    }

    fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<TokenId>> {
        let mut ids = self
            .0
            .tokenizer
            .encode(text, parse_special)
            .map_err(|e| e.into_engine_error(ENGINE_ID))?;
        if add_special
            && self.0.special.add_bos
            && let Some(b) = self.0.special.bos
        {
            ids.insert(0, b);
        }
        Ok(ids)
    }

    fn token_bytes(&self, token: TokenId) -> Result<&[u8]> {
        self.0.tokenizer.token_bytes(token).ok_or_else(|| {
            EngineError::InvalidInput(format!(
                "token {token} is outside the vocabulary of {}",
                self.0.info.vocab_size
            ))
        })
    }

    async fn load_adapter(&self, source: ModelSource, scale: f32) -> Result<Arc<dyn Adapter>> {
        Ok(Arc::new(BurnAdapter::load(&self.0, source, scale)?))
    }

    async fn new_session(&self, options: SessionOptions) -> Result<Box<dyn Session>> {
        let adapter = match &options.adapter {
            Some(a) => Some(BurnAdapter::for_model(a, &self.0)?),
            None => None,
        };
        let info = &self.0.info;
        let ctx = resolve_context(
            options.context_length,
            info.context_length,
            info.max_context_length,
        )?;
        Ok(Box::new(BurnSession {
            model: self.0.clone(),
            cache: self.0.llama.new_cache(ctx as usize),
            tokens: Vec::new(),
            context: ctx as usize,
            adapter,
            logit_rows: 1,
        }))
    }
}

pub struct BurnSession {
    model: Arc<Inner>,
    /// Checked at creation to be a [`BurnAdapter`] of this model.
    adapter: Option<Arc<dyn Adapter>>,
    cache: KvCache,
    tokens: Vec<TokenId>,
    context: usize,
    /// The most logits rows one chunk has returned: a chunk's logits are a
    /// `rows × vocab` tensor, 50 MB for 256 rows of a 49k vocabulary.
    logit_rows: usize,
}

impl BurnSession {
    /// Forward passes of at most `BATCH` tokens, appending the logits
    /// `request` asks for to `data`.
    async fn run_chunks(
        &mut self,
        tokens: &[TokenId],
        request: LogitsRequest,
        data: &mut Vec<f32>,
    ) -> Result<()> {
        let chunks: Vec<&[TokenId]> = tokens.chunks(BATCH).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let all = request == LogitsRequest::All;
            let wanted = all || (last && request == LogitsRequest::Last);
            let rows = if all { chunk.len() } else { 1 };
            self.logit_rows = self.logit_rows.max(rows);
            let lora = self.adapter.as_ref().and_then(BurnAdapter::lora);
            let out = self.model.forward(chunk, &mut self.cache, rows, lora);
            self.tokens.extend_from_slice(chunk);
            if wanted {
                // Async readback: the only kind a browser's WebGPU offers.
                let d = out.into_data_async().await.map_err(readback)?;
                data.extend_from_slice(d.as_slice::<f32>().map_err(readback)?);
            }
        }
        Ok(())
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
impl Session for BurnSession {
    fn context_length(&self) -> usize {
        self.context
    }

    fn tokens(&self) -> &[TokenId] {
        &self.tokens
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        self.tokens.truncate(len);
        self.cache.truncate(len);
        Ok(())
    }

    fn preferred_batch(&self) -> usize {
        BATCH
    }

    fn resident_bytes(&self) -> u64 {
        // K and V, f32, for the whole context once it fills, and the
        // logits rows beyond the one the model's working set counts.
        let c = &self.model.llama.cfg;
        (4 * (2 * c.n_layer * c.n_head_kv * c.head_dim * self.context
            + (self.logit_rows - 1) * c.vocab)) as u64
    }

    async fn eval(&mut self, tokens: &[TokenId], logits: LogitsRequest) -> Result<Logits> {
        let vocab = self.model.llama.cfg.vocab;
        let mut data = Vec::new();
        if !check_eval(tokens, self.tokens.len(), self.context, vocab)? {
            return Ok(Logits { vocab, data });
        }
        let start = self.tokens.len();
        if let Err(e) = self.run_chunks(tokens, logits, &mut data).await {
            // The contract: a failed eval leaves the cache as it was.
            self.truncate(start)?;
            return Err(e);
        }
        // In a page the CPU backend computes without awaiting anything, so
        // nothing else (a click on "stop", a repaint) would run until the
        // whole answer is done. Hand the event loop a turn per call.
        #[cfg(target_family = "wasm")]
        if self.model.backend == Backend::Cpu {
            yield_to_event_loop().await;
        }
        Ok(Logits { vocab, data })
    }
}

fn readback(e: impl std::fmt::Debug) -> EngineError {
    EngineError::engine(ENGINE_ID, format!("reading logits: {e:?}"))
}

/// Resolves on a later task, after pending events: a message to itself,
/// as React's scheduler yields. Not `setTimeout(0)`:
/// browsers clamp a timer set from a timer's own task to 4 ms after five
/// levels, and each token's yield is set from the previous one's, so a page
/// decoded at most ~250 tokens/s and paid 4 ms a token (Node pays 1 ms).
#[cfg(target_family = "wasm")]
async fn yield_to_event_loop() {
    #[wasm_bindgen::prelude::wasm_bindgen(inline_js = r#"
export function arny_yield() {
  if (typeof MessageChannel === "function") {
    return new Promise((resolve) => {
      const c = new MessageChannel();
      c.port1.onmessage = () => { c.port1.close(); resolve(); };
      c.port2.postMessage(null);
    });
  }
  return new Promise((resolve) => setTimeout(resolve, 0));
}"#)]
    extern "C" {
        #[wasm_bindgen::prelude::wasm_bindgen(catch)]
        fn arny_yield() -> Result<js_sys::Promise, wasm_bindgen::JsValue>;
    }
    if let Ok(promise) = arny_yield() {
        let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
    }
}
