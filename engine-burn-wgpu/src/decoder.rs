//! The decoder-only transformers of today's small models on Burn: Llama
//! (SmolLM2, Llama 3.x), Qwen2/2.5, Qwen3, Gemma 3 and Phi-3. They share
//! one block (norm → grouped-query attention with RoPE → residual, norm →
//! gated MLP → residual) and differ by the switches in [`Config`]: QKV
//! bias, QK-norm, head sizes other than `n_embd / n_head`, the norms Gemma
//! puts after attention and MLP, GeGLU, embedding scaling, sliding-window
//! layers, logit soft-capping and the RoPE variants. One file, top to
//! bottom, like candle-transformers'; each switch is read from the GGUF
//! file as llama.cpp reads it.
//!
//! Weights come from a GGUF file. On the CPU they stay in the file's block
//! format ([`WeightPrecision::Packed`]) and every projection is a call into
//! `arny-qmatmul`'s kernels on the tensor's bytes; otherwise they are
//! dequantized into Burn tensors. Fused tensors (Phi-3's `attn_qkv` and
//! gate-and-up `ffn_up`) are split into their projections at load, views on
//! the same bytes. GGUF stores Llama's Q and K permuted for llama.cpp's
//! "normal" RoPE, which rotates adjacent pairs (x[2i], x[2i+1]); the other
//! families rotate the two halves (NeoX), as llama.cpp does for them.

use std::sync::Arc;

use arny_engine_api::EngineError;
use arny_gguf::GgufFile;
use arny_gguf::TensorInfo;
use arny_gguf::lora::LoraFile;
use arny_qmatmul::{QMatrix, QType};
#[cfg(feature = "wgpu")]
use arny_qmatmul_gpu::GpuQMatrix;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, FloatDType, Tensor, TensorData};

/// The architectures this file runs, by their GGUF names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
    Phi3,
}

impl Arch {
    pub const ALL: [Self; 5] = [
        Self::Llama,
        Self::Qwen2,
        Self::Qwen3,
        Self::Gemma3,
        Self::Phi3,
    ];

    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma3 => "gemma3",
            Self::Phi3 => "phi3",
        }
    }

    pub fn from_gguf(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.gguf_name() == name)
    }

    /// llama.cpp's rope type for the architecture: Llama's converter
    /// permutes Q and K for adjacent pairs, the others keep the halves.
    fn neox_rope(self) -> bool {
        self != Self::Llama
    }
}

/// The gated MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) * up`.
    SwiGlu,
    /// `gelu_tanh(gate) * up` (Gemma), with llama.cpp's f16 table.
    GeGlu,
}

/// How positions are rotated into queries and keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// Rotate the two halves of a head (NeoX) rather than adjacent pairs.
    pub neox: bool,
    pub base: f32,
    /// Linear scaling: positions multiplied by this (`1 / rope.scaling.factor`).
    pub freq_scale: f32,
    /// Sliding-window layers' own base (Gemma 3: 10 000 beside 1 000 000).
    pub base_swa: f32,
    /// Per-frequency divisors (`rope_freqs.weight`: Llama 3's scaling; or
    /// Phi-3's LongRoPE short/long factors, picked by the context length).
    pub factors: Option<Vec<f32>>,
}

/// Hyperparameters from the GGUF metadata (`<arch>.*`).
#[derive(Debug, Clone)]
pub struct Config {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Per head, for queries, keys and values (`attention.key_length`).
    pub head_dim: usize,
    pub n_ff: usize,
    pub vocab: usize,
    pub rope: Rope,
    pub rms_eps: f32,
    pub context_length: usize,
    /// Scale of the attention scores (`1 / sqrt(head_dim)` unless set).
    pub attn_scale: f32,
    /// Token embeddings multiplied by this (Gemma: `sqrt(n_embd)`).
    pub embed_scale: Option<f32>,
    /// Logits squashed to `cap · tanh(x / cap)`.
    pub logit_softcap: Option<f32>,
    pub activation: Activation,
    /// Keys a sliding-window layer's query sees: positions `p - window + 1
    /// ..= p`.
    pub sliding_window: Option<usize>,
    /// Which layers slide (the rest attend to everything).
    pub swa_layers: Vec<bool>,
}

impl Config {
    pub fn from_gguf(f: &GgufFile, name: &str) -> Result<Self, EngineError> {
        let corrupt = |reason: String| EngineError::Corrupt {
            source_name: name.to_string(),
            reason,
        };
        let arch_name = f.architecture().unwrap_or("");
        let arch = Arch::from_gguf(arch_name)
            .ok_or_else(|| EngineError::UnsupportedArchitecture(arch_name.to_string()))?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let opt_u = |k: &str| f.get_u64(&key(k)).map(|v| v as usize);
        let u = |k: &str| opt_u(k).ok_or_else(|| corrupt(format!("missing {}", key(k))));
        let fl = |k: &str| f.get(&key(k)).and_then(|v| v.as_f64()).map(|v| v as f32);
        let unsupported = |what: String| EngineError::Unsupported(format!("{name}: {what}"));
        let n_embd = u("embedding_length")?;
        let n_layer = u("block_count")?;
        // Per-layer arrays (head counts, widths) would be Array values.
        for k in [
            "attention.head_count",
            "attention.head_count_kv",
            "feed_forward_length",
        ] {
            if let Some(arny_gguf::Value::Array(_)) = f.get(&key(k)) {
                return Err(unsupported(format!("per-layer {}", key(k))));
            }
        }
        let n_head = u("attention.head_count")?;
        let n_head_kv = opt_u("attention.head_count_kv").unwrap_or(n_head);
        let head_dim =
            opt_u("attention.key_length").unwrap_or(n_embd.checked_div(n_head).unwrap_or(0));
        if opt_u("attention.value_length").is_some_and(|v| v != head_dim) {
            return Err(unsupported(
                "value heads of another size than key heads".into(),
            ));
        }
        if opt_u("rope.dimension_count").is_some_and(|r| r != head_dim) {
            return Err(unsupported(format!(
                "partial rotary embeddings ({} of {head_dim} dimensions)",
                opt_u("rope.dimension_count").unwrap_or(0)
            )));
        }
        let vocab = f
            .tensor("token_embd.weight")
            .map(|t| t.dims.get(1).copied().unwrap_or(0) as usize)
            .ok_or_else(|| corrupt("no token_embd.weight".into()))?;
        let scaling = f.get_str(&key("rope.scaling.type")).unwrap_or("none");
        let factor = fl("rope.scaling.factor")
            .or_else(|| fl("rope.scale_linear"))
            .unwrap_or(0.0);
        let freq_scale = match scaling {
            // llama.cpp applies the factor for "none" too, as "linear".
            "none" | "linear" if factor != 0.0 => 1.0 / factor,
            "none" | "linear" | "longrope" => 1.0,
            other => return Err(unsupported(format!("RoPE scaling `{other}`"))),
        };
        let sliding_window = opt_u("attention.sliding_window").filter(|&w| w > 0);
        let swa_layers = match (arch, sliding_window) {
            // Phi-3's window is ignored by llama.cpp (its converters fill it
            // wrongly); Gemma 3 slides in 5 of every 6 layers unless told.
            (Arch::Gemma3, Some(_)) => match f.get(&key("attention.sliding_window_pattern")) {
                Some(arny_gguf::Value::Array(a)) => {
                    let v: Vec<bool> = a.iter().map(|x| x.as_i64().unwrap_or(0) != 0).collect();
                    if v.len() > n_layer {
                        return Err(corrupt(
                            "sliding_window_pattern is longer than the model".into(),
                        ));
                    }
                    let mut v = v;
                    v.resize(n_layer, false);
                    v
                }
                other => {
                    let n = other.and_then(|v| v.as_u64()).unwrap_or(6) as usize;
                    (0..n_layer).map(|l| n == 0 || l % n < n - 1).collect()
                }
            },
            _ => vec![false; n_layer],
        };
        let sliding_window = sliding_window.filter(|_| swa_layers.iter().any(|&s| s));
        let rope = Rope {
            neox: arch.neox_rope(),
            base: fl("rope.freq_base").unwrap_or(10_000.0),
            freq_scale,
            base_swa: fl("rope.freq_base_swa").unwrap_or(10_000.0),
            factors: None,
        };
        // llama.cpp's YaRN-style attention factor is not built here.
        if fl("rope.scaling.attn_factor").is_some_and(|a| a != 1.0) {
            return Err(unsupported(format!(
                "{} ≠ 1",
                key("rope.scaling.attn_factor")
            )));
        }
        let gemma = arch == Arch::Gemma3;
        let cfg = Self {
            arch,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: u("feed_forward_length")?,
            vocab,
            rope,
            rms_eps: fl("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            context_length: u("context_length")?,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            embed_scale: gemma.then(|| (n_embd as f32).sqrt()),
            logit_softcap: fl("final_logit_softcapping").filter(|&c| c != 0.0),
            activation: if gemma {
                Activation::GeGlu
            } else {
                Activation::SwiGlu
            },
            sliding_window,
            swa_layers,
        };
        let finite = |x: f32| x.is_finite();
        let ok = cfg.n_layer > 0
            && cfg.n_layer <= 512
            && cfg.n_head > 0
            && cfg.n_head_kv > 0
            && cfg.n_head.is_multiple_of(cfg.n_head_kv)
            && cfg.head_dim > 0
            && cfg.head_dim.is_multiple_of(2)
            && cfg.head_dim <= 1024
            && cfg.rms_eps.is_finite()
            && cfg.rms_eps >= 0.0
            && [cfg.rope.base, cfg.rope.base_swa, cfg.rope.freq_scale]
                .into_iter()
                .all(|x| finite(x) && x > 0.0)
            && cfg.logit_softcap.is_none_or(|c| finite(c) && c > 0.0);
        if !ok {
            return Err(corrupt(format!("inconsistent hyperparameters: {cfg:?}")));
        }
        Ok(cfg)
    }

    /// Width of all query heads together (`n_embd` unless heads are sized
    /// on their own, as in Qwen3 and Gemma 3).
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

struct Block {
    attn_norm: Norm,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    /// Added to the projections (Qwen2).
    qkv_bias: Option<[Tensor<1>; 3]>,
    /// RMSNorm over each query and key head before RoPE (Qwen3, Gemma 3).
    qk_norm: Option<[Norm; 2]>,
    wo: Linear,
    /// RMSNorm on the attention's output before the residual (Gemma).
    attn_post_norm: Option<Norm>,
    ffn_norm: Norm,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
    /// RMSNorm on the MLP's output before the residual (Gemma).
    ffn_post_norm: Option<Norm>,
    /// The layer attends within the sliding window.
    sliding: bool,
}

/// An RMSNorm weight, on the device and (for the host's RMSNorm) as
/// values, so a token does not read it back from the device.
struct Norm {
    device: Tensor<1>,
    host: Vec<f32>,
}

/// A projection's weight as the model holds it.
enum Linear {
    /// `[in, out]` on the device, f32 or Burn-quantized: `x.matmul(w)`.
    Dense(Tensor<2>),
    /// `[in, out]` on the device in f16: f16 inputs, the product cast back
    /// to f32.
    Half(Tensor<2>),
    /// `[out, in]` GGUF blocks on the host, multiplied by `arny-qmatmul`.
    Packed(QMatrix),
    /// `[out, in]` GGUF blocks on the GPU, multiplied by
    /// `arny-qmatmul-gpu`'s shaders.
    #[cfg(feature = "wgpu")]
    Gpu(Box<GpuQMatrix>),
}

impl Linear {
    /// `x @ W` for `x: [m, in]`.
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Dense(w) => x.matmul(w.clone()),
            Self::Half(w) => x
                .cast(FloatDType::F16)
                .matmul(w.clone())
                .cast(FloatDType::F32),
            Self::Packed(w) => {
                let device = x.device();
                let [m, _] = x.dims();
                // The CPU backend's tensors are host memory: reading one
                // back is ready at once, also in a browser.
                let x = x.into_data();
                let x = x.as_slice::<f32>().expect("activations are f32");
                let mut out = vec![0f32; m * w.rows()];
                arny_qmatmul::matmul(x, m, w, &mut out);
                Tensor::from_data(TensorData::new(out, [m, w.rows()]), &device)
            }
            #[cfg(feature = "wgpu")]
            Self::Gpu(w) => w.matmul(x),
        }
    }
}

/// How the projection weights are held on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightPrecision {
    F32,
    /// Half the memory and bandwidth; each matmul takes f16 inputs and the
    /// rest of the block (norms, softmax, residuals) stays in f32.
    F16,
    /// Burn's block quantization: 8-bit symmetric values with one f16 scale
    /// per 32 inputs, GGUF Q8_0's layout. Matmuls take f32 inputs.
    Q8,
    /// The file's own blocks (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K). On the CPU
    /// they are read in place by `arny-qmatmul`'s kernels, activations
    /// quantized to 8 bits as llama.cpp does; on wgpu they are copied to
    /// the GPU as word-aligned arrays and read by `arny-qmatmul-gpu`'s
    /// shaders with f32 activations. Other block types and f16/bf16 become
    /// Q8_0 at load; f32 tensors stay f32. The default on both backends.
    Packed,
}

impl WeightPrecision {
    /// Bytes that `elements` weights take on the device.
    pub fn bytes(self, elements: usize) -> u64 {
        let per_32 = match self {
            Self::F32 => 128,
            Self::F16 => 64,
            Self::Q8 => 34, // 32 values and an f16 scale
            // Q8_0, the widest packed format.
            Self::Packed => 34,
        };
        (elements as u64 * per_32).div_ceil(32)
    }
}

/// The token table, rows looked up on the host.
enum Embeddings {
    /// The file's blocks, a row decoded per token (27 MB of Q8_0 for the
    /// default model where f32 would take 113 MB).
    Packed(QMatrix),
    /// `[vocab, n_embd]` f32, for f32 and f16 tables.
    F32(Vec<f32>),
}

impl Embeddings {
    fn lookup(&self, tokens: &[u32], e: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(tokens.len() * e);
        for &t in tokens {
            let t = t as usize;
            match self {
                Self::Packed(q) => q.dequantize_row(t, &mut out),
                Self::F32(v) => out.extend_from_slice(&v[t * e..(t + 1) * e]),
            }
        }
        out
    }

    fn bytes(&self) -> u64 {
        match self {
            Self::Packed(q) => q.bytes().len() as u64,
            Self::F32(v) => v.len() as u64 * 4,
        }
    }
}

pub struct Decoder {
    pub cfg: Config,
    pub precision: WeightPrecision,
    device: Device,
    embeddings: Embeddings,
    blocks: Vec<Block>,
    out_norm: Norm,
    /// Never f16: an f16 matmul writes f16, and logits rounded to f16
    /// (steps of 1/64 around 20) would differ between a one-row and a
    /// many-row pass.
    lm_head: Linear,
    /// Bytes the weights and the token table take, on the device and the
    /// host; with packed weights, the whole file buffer they point into.
    pub resident_bytes: u64,
    /// The block types the packed projections hold, for `ModelInfo`.
    pub packed_types: Vec<&'static str>,
    /// Attention and RMSNorm run on the host (the CPU backend) rather than
    /// as device tensor ops.
    on_host: bool,
}

/// One sequence's keys and values, per layer.
pub struct KvCache {
    layers: Vec<LayerKv>,
    head_dim: usize,
    pub len: usize,
    /// The most positions it will hold: a device cache's room stops there.
    positions: usize,
}

/// One layer's keys and values. (A Burn tensor is large, but there are
/// only `n_layer` of these per session.)
#[allow(clippy::large_enum_variant)]
enum LayerKv {
    /// `[n_head_kv, capacity, head_dim]` tensors on the device (wgpu),
    /// the first `len` positions in use.
    Device {
        k: Option<Tensor<3>>,
        v: Option<Tensor<3>>,
    },
    /// Host memory, one `[len, head_dim]` buffer per KV head, that the CPU
    /// backend's attention reads in place.
    Host { k: Vec<Vec<f32>>, v: Vec<Vec<f32>> },
}

impl KvCache {
    /// Keeps the first `len` positions.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        for layer in &mut self.layers {
            match layer {
                // The next positions are written over the dropped ones.
                LayerKv::Device { .. } => {}
                LayerKv::Host { k, v } => {
                    for head in k.iter_mut().chain(v.iter_mut()) {
                        head.truncate(len * self.head_dim);
                    }
                }
            }
        }
        self.len = len;
    }
}

/// Tensor `name`, checked to have the shape `expect` (ggml order) and a
/// type this engine reads.
fn tensor<'f>(
    f: &'f GgufFile,
    source: &str,
    name: &str,
    expect: &[usize],
) -> Result<&'f TensorInfo, EngineError> {
    let t = f
        .tensor(name)
        .ok_or_else(|| corrupt(source, format!("missing tensor {name}")))?;
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    if dims != expect {
        return Err(corrupt(
            source,
            format!("tensor {name} has shape {dims:?}, expected {expect:?}"),
        ));
    }
    if !arny_gguf::dequant::SUPPORTED.contains(&t.ggml_type) {
        return Err(EngineError::UnsupportedQuantization(
            t.type_name().unwrap_or("unknown").to_string(),
        ));
    }
    Ok(t)
}

fn corrupt(source: &str, reason: String) -> EngineError {
    EngineError::Corrupt {
        source_name: source.to_string(),
        reason,
    }
}

/// Tensor `t` as f32 values, refused if any is not finite.
fn dequantize(
    f: &GgufFile,
    bytes: &[u8],
    source: &str,
    t: &TensorInfo,
) -> Result<Vec<f32>, EngineError> {
    let v = f
        .dequantize(bytes, t)
        .map_err(|e| corrupt(source, e.to_string()))?;
    if v.iter().any(|x| !x.is_finite()) {
        return Err(corrupt(
            source,
            format!("tensor {} holds non-finite values", t.name),
        ));
    }
    Ok(v)
}

/// 2-D tensor `t` (`rows` of `cols`) as blocks the kernels read: the
/// file's own where its type is one of theirs (pointing into `bytes`, or
/// a copy of just this tensor when `share` is false), else requantized to
/// Q8_0. `None` for f32 tensors and widths that are not whole blocks,
/// which stay f32.
fn packed(
    f: &GgufFile,
    bytes: &Arc<[u8]>,
    source: &str,
    t: &TensorInfo,
    (rows, cols): (usize, usize),
    share: bool,
) -> Result<Option<QMatrix>, EngineError> {
    const F32: u32 = 0;
    let q = if let Some(ty) = QType::from_ggml(t.ggml_type) {
        let data = f
            .tensor_data(bytes, t)
            .map_err(|e| corrupt(source, e.to_string()))?;
        let q = if share {
            QMatrix::new(ty, rows, cols, bytes.clone(), t.start as usize)
        } else {
            QMatrix::new(ty, rows, cols, data.into(), 0)
        };
        q.map_err(|e| corrupt(source, format!("tensor {}: {e}", t.name)))?
    } else if t.ggml_type == F32 || !cols.is_multiple_of(32) {
        return Ok(None);
    } else {
        let v = dequantize(f, bytes, source, t)?;
        QMatrix::quantize_q8_0(&v, rows, cols)
            .map_err(|e| corrupt(source, format!("tensor {}: {e}", t.name)))?
    };
    if !q.scales_finite() {
        return Err(corrupt(
            source,
            format!("tensor {} holds non-finite scales", t.name),
        ));
    }
    Ok(Some(q))
}

/// The per-frequency RoPE divisors, as llama.cpp picks them: Llama 3's
/// `rope_freqs`, else LongRoPE's short factors. Its long factors serve
/// contexts past the trained length, which llama.cpp switches to per
/// context; here the context is capped at that length instead, so the
/// short factors are always right.
fn rope_factors(
    f: &GgufFile,
    bytes: &[u8],
    source: &str,
    cfg: &mut Config,
) -> Result<(), EngineError> {
    let n = cfg.head_dim / 2;
    let read = |name: &str| -> Result<Option<Vec<f32>>, EngineError> {
        let Some(_) = f.tensor(name) else {
            return Ok(None);
        };
        let v = dequantize(f, bytes, source, tensor(f, source, name, &[n])?)?;
        if v.iter().any(|&x| x <= 0.0) {
            return Err(corrupt(source, format!("{name} holds a factor ≤ 0")));
        }
        Ok(Some(v))
    };
    if let Some(v) = read("rope_freqs.weight")? {
        cfg.rope.factors = Some(v);
    } else if let Some(short) = read("rope_factors_short.weight")? {
        if read("rope_factors_long.weight")?.is_some_and(|long| long != short) {
            let key = format!(
                "{}.rope.scaling.original_context_length",
                cfg.arch.gguf_name()
            );
            if let Some(orig) = f.get_u64(&key) {
                cfg.context_length = cfg.context_length.min(orig as usize);
            }
        }
        cfg.rope.factors = Some(short);
    }
    Ok(())
}

impl Decoder {
    /// `on_cpu`: the device is Burn's CPU backend, so attention and the KV
    /// cache live on the host.
    pub fn load(
        f: &GgufFile,
        bytes: &Arc<[u8]>,
        source: &str,
        (device, on_cpu): (&Device, bool),
        precision: WeightPrecision,
        progress: &dyn Fn(f32),
    ) -> Result<Self, EngineError> {
        let mut cfg = Config::from_gguf(f, source)?;
        rope_factors(f, bytes, source, &mut cfg)?;
        let (e, q_dim, kv) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim());
        let dense_bytes = std::cell::Cell::new(0u64);
        let types = std::cell::RefCell::new(Vec::<&'static str>::new());
        let values = |name: &str, n: usize| -> Result<Vec<f32>, EngineError> {
            dense_bytes.set(dense_bytes.get() + WeightPrecision::F32.bytes(n));
            dequantize(f, bytes, source, tensor(f, source, name, &[n])?)
        };
        let norm = |v: Vec<f32>| Norm {
            device: Tensor::from_data(TensorData::new(v.clone(), [v.len()]), device),
            host: v,
        };
        let vec1 = |name: &str, n: usize| values(name, n).map(norm);
        let opt_vec1 = |name: &str, n: usize| -> Result<Option<Norm>, EngineError> {
            f.tensor(name).map(|_| vec1(name, n)).transpose()
        };
        let dense = |v: Vec<f32>, n_in: usize, n_out: usize, precision: WeightPrecision| {
            dense_bytes.set(dense_bytes.get() + precision.bytes(n_in * n_out));
            Self::weight(
                Tensor::<2>::from_data(TensorData::new(v, [n_out, n_in]), device),
                precision,
            )
        };
        // GGUF dims are innermost first: [in, out] there is `out` rows of
        // `in`. `parts` are the row ranges (start, n) of a fused tensor,
        // one projection each.
        // A packed matrix as the backend multiplies it: in place on the
        // host, or copied to the GPU.
        let to_linear = |q: QMatrix| -> Result<Linear, EngineError> {
            let mut types = types.borrow_mut();
            if !types.contains(&q.ty().name()) {
                types.push(q.ty().name());
            }
            if on_cpu {
                return Ok(Linear::Packed(q));
            }
            #[cfg(feature = "wgpu")]
            {
                let g = GpuQMatrix::upload(&q, device)
                    .map_err(|e| EngineError::Unsupported(e.to_string()))?;
                dense_bytes.set(dense_bytes.get() + g.bytes());
                Ok(Linear::Gpu(Box::new(g)))
            }
            #[cfg(not(feature = "wgpu"))]
            Err(EngineError::Unsupported(
                "packed weights on a GPU: this build has no wgpu backend".into(),
            ))
        };
        let mats = |name: &str,
                    n_in: usize,
                    parts: &[(usize, usize)],
                    precision: WeightPrecision|
         -> Result<Vec<Linear>, EngineError> {
            let n_out = parts.iter().map(|p| p.1).sum();
            let t = tensor(f, source, name, &[n_in, n_out])?;
            if precision == WeightPrecision::Packed
                && let Some(q) = packed(f, bytes, source, t, (n_out, n_in), true)?
            {
                return parts
                    .iter()
                    .map(|&(r, n)| {
                        q.row_range(r, n)
                            .map_err(|e| corrupt(source, format!("tensor {name}: {e}")))
                            .and_then(to_linear)
                    })
                    .collect();
            }
            let v = dequantize(f, bytes, source, t)?;
            let dense_precision = match precision {
                WeightPrecision::Packed => WeightPrecision::F32,
                p => p,
            };
            Ok(parts
                .iter()
                .map(|&(r, n)| {
                    dense(
                        v[r * n_in..(r + n) * n_in].to_vec(),
                        n_in,
                        n,
                        dense_precision,
                    )
                })
                .collect())
        };
        let mat = |name: &str, n_in: usize, n_out: usize, precision: WeightPrecision| {
            mats(name, n_in, &[(0, n_out)], precision).map(|mut v| v.remove(0))
        };
        let bias =
            |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), device);
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            let pb = |s: &str| format!("blk.{i}.{s}.bias");
            // Phi-3 stores Q, K and V as one tensor, and gate and up as one.
            let [wq, wk, wv]: [Linear; 3] = if f.tensor(&p("attn_qkv")).is_some() {
                let parts = [(0, q_dim), (q_dim, kv), (q_dim + kv, kv)];
                mats(&p("attn_qkv"), e, &parts, precision)?
                    .try_into()
                    .map_err(|_| corrupt(source, "attn_qkv split".into()))?
            } else {
                [
                    mat(&p("attn_q"), e, q_dim, precision)?,
                    mat(&p("attn_k"), e, kv, precision)?,
                    mat(&p("attn_v"), e, kv, precision)?,
                ]
            };
            let qkv_bias = if f.tensor(&pb("attn_qkv")).is_some() {
                let v = values(&pb("attn_qkv"), q_dim + 2 * kv)?;
                Some([
                    bias(v[..q_dim].to_vec()),
                    bias(v[q_dim..q_dim + kv].to_vec()),
                    bias(v[q_dim + kv..].to_vec()),
                ])
            } else if f.tensor(&pb("attn_q")).is_some() {
                Some([
                    bias(values(&pb("attn_q"), q_dim)?),
                    bias(values(&pb("attn_k"), kv)?),
                    bias(values(&pb("attn_v"), kv)?),
                ])
            } else {
                None
            };
            let qk_norm = match (
                opt_vec1(&p("attn_q_norm"), cfg.head_dim)?,
                opt_vec1(&p("attn_k_norm"), cfg.head_dim)?,
            ) {
                (Some(q), Some(k)) => Some([q, k]),
                (None, None) => None,
                _ => {
                    return Err(corrupt(
                        source,
                        format!("layer {i} normalizes only one of Q and K"),
                    ));
                }
            };
            let [w_gate, w_up]: [Linear; 2] = if f.tensor(&p("ffn_gate")).is_some() {
                [
                    mat(&p("ffn_gate"), e, cfg.n_ff, precision)?,
                    mat(&p("ffn_up"), e, cfg.n_ff, precision)?,
                ]
            } else {
                // llama.cpp's swiglu: the first half is the gate.
                mats(
                    &p("ffn_up"),
                    e,
                    &[(0, cfg.n_ff), (cfg.n_ff, cfg.n_ff)],
                    precision,
                )?
                .try_into()
                .map_err(|_| corrupt(source, "ffn_up split".into()))?
            };
            blocks.push(Block {
                attn_norm: vec1(&p("attn_norm"), e)?,
                wq,
                wk,
                wv,
                qkv_bias,
                qk_norm,
                wo: mat(&p("attn_output"), q_dim, e, precision)?,
                attn_post_norm: opt_vec1(&p("post_attention_norm"), e)?,
                ffn_norm: vec1(&p("ffn_norm"), e)?,
                w_gate,
                w_up,
                w_down: mat(&p("ffn_down"), cfg.n_ff, e, precision)?,
                ffn_post_norm: opt_vec1(&p("post_ffw_norm"), e)?,
                sliding: cfg.swa_layers[i],
            });
            progress((i + 1) as f32 / (cfg.n_layer + 1) as f32);
        }
        for (name, got, what) in [
            (
                "post-attention norms",
                blocks.iter().filter(|b| b.attn_post_norm.is_some()).count(),
                "attn_post_norm",
            ),
            (
                "post-MLP norms",
                blocks.iter().filter(|b| b.ffn_post_norm.is_some()).count(),
                "ffn_post_norm",
            ),
        ] {
            let want = if cfg.arch == Arch::Gemma3 {
                cfg.n_layer
            } else {
                0
            };
            if got != want {
                return Err(corrupt(
                    source,
                    format!(
                        "{got} of {} layers have {name} ({what}); {} expects {want}",
                        cfg.n_layer,
                        cfg.arch.gguf_name()
                    ),
                ));
            }
        }
        let qk_norms = blocks.iter().filter(|b| b.qk_norm.is_some()).count();
        let want = if matches!(cfg.arch, Arch::Qwen3 | Arch::Gemma3) {
            cfg.n_layer
        } else {
            0
        };
        if qk_norms != want {
            return Err(corrupt(
                source,
                format!(
                    "{qk_norms} of {} layers have QK norms; {} expects {want}",
                    cfg.n_layer,
                    cfg.arch.gguf_name()
                ),
            ));
        }
        let out_norm = vec1("output_norm.weight", e)?;
        let packed_model = precision == WeightPrecision::Packed;
        // Packed projections on the CPU point into the file's buffer; on
        // the GPU they are copies and the buffer can go.
        let shares_file = packed_model && on_cpu;
        // A quantized token table stays in blocks on the host on every
        // precision; unless the projections keep the file's buffer, it is
        // copied out, so the buffer can go.
        let embd = tensor(f, source, "token_embd.weight", &[e, cfg.vocab])?;
        let embeddings = match QType::from_ggml(embd.ggml_type) {
            Some(_) => Embeddings::Packed(
                packed(f, bytes, source, embd, (cfg.vocab, e), shares_file)?
                    .expect("a block type packs"),
            ),
            None => Embeddings::F32(dequantize(f, bytes, source, embd)?),
        };
        let head_precision = match precision {
            WeightPrecision::F16 => WeightPrecision::F32,
            p => p,
        };
        let lm_head = if f.tensor("output.weight").is_some() {
            mat("output.weight", e, cfg.vocab, head_precision)?
        } else {
            match (&embeddings, packed_model) {
                // Tied: the token table's blocks serve as the output matrix.
                (Embeddings::Packed(q), true) => to_linear(q.clone())?,
                (Embeddings::F32(v), true) => {
                    match packed(f, bytes, source, embd, (cfg.vocab, e), true)? {
                        Some(q) => to_linear(q)?,
                        None => dense(v.clone(), e, cfg.vocab, WeightPrecision::F32),
                    }
                }
                (Embeddings::Packed(q), false) => {
                    let mut v = Vec::with_capacity(cfg.vocab * e);
                    for r in 0..cfg.vocab {
                        q.dequantize_row(r, &mut v);
                    }
                    dense(v, e, cfg.vocab, head_precision)
                }
                (Embeddings::F32(v), false) => dense(v.clone(), e, cfg.vocab, head_precision),
            }
        };
        progress(1.0);
        // Packed projections on the CPU point into the file's buffer, which
        // stays whole while they live; otherwise the table's own bytes count.
        let holds_file = shares_file
            && (!types.borrow().is_empty() || matches!(embeddings, Embeddings::Packed(_)));
        let host = if holds_file {
            bytes.len() as u64
        } else {
            embeddings.bytes()
        };
        let packed_types = types.into_inner();
        Ok(Self {
            cfg,
            precision,
            device: device.clone(),
            embeddings,
            blocks,
            out_norm,
            lm_head,
            resident_bytes: dense_bytes.get() + host,
            packed_types,
            on_host: on_cpu,
        })
    }

    /// An empty cache for one sequence of at most `positions` positions.
    pub fn new_cache(&self, positions: usize) -> KvCache {
        let c = &self.cfg;
        let layer = || {
            if self.on_host {
                LayerKv::Host {
                    k: vec![Vec::new(); c.n_head_kv],
                    v: vec![Vec::new(); c.n_head_kv],
                }
            } else {
                LayerKv::Device { k: None, v: None }
            }
        };
        KvCache {
            layers: (0..c.n_layer).map(|_| layer()).collect(),
            head_dim: c.head_dim,
            len: 0,
            positions,
        }
    }

    /// `[out, in]` as read from the file → `[in, out]` in `precision`.
    fn weight(w: Tensor<2>, precision: WeightPrecision) -> Linear {
        match precision {
            WeightPrecision::F32 | WeightPrecision::Packed => Linear::Dense(w.transpose()),
            WeightPrecision::F16 => Linear::Half(w.cast(FloatDType::F16).transpose()),
            WeightPrecision::Q8 => {
                use burn::tensor::quantization::{QuantScheme, QuantStore, QuantValue, ScaleDtype};
                let scheme = QuantScheme::default()
                    .with_value(QuantValue::Q8S)
                    .with_store(QuantStore::PackedU32(0))
                    .per_block([1, 32], ScaleDtype::F16);
                Linear::Dense(w.quantize_dynamic(&scheme).transpose())
            }
        }
    }

    fn rms_norm(&self, x: Tensor<2>, w: &Norm) -> Tensor<2> {
        if self.on_host {
            // On the host, each row summed in one fixed order: Burn's CPU
            // reduction sums a one-row tensor in another order than a
            // many-row one, and 8-bit activations downstream turn that last
            // bit into a rounding step (a continued session then differs
            // from a fresh one).
            let [s, e] = x.dims();
            let xs = x
                .into_data()
                .try_into_vec::<f32>()
                .expect("f32 activations");
            let ws = &w.host;
            let mut out = Vec::with_capacity(s * e);
            for row in xs.chunks_exact(e) {
                // As llama.cpp: squares summed in f64, the scale in f32.
                let sum: f64 = row.iter().map(|&v| f64::from(v * v)).sum();
                let inv = 1.0 / ((sum / e as f64) as f32 + self.cfg.rms_eps).sqrt();
                out.extend(row.iter().zip(ws).map(|(v, w)| (v * inv) * w));
            }
            return Tensor::from_data(TensorData::new(out, [s, e]), &self.device);
        }
        // One launch on a CubeCL device where six tensor ops were.
        #[cfg(feature = "wgpu")]
        if let Ok(y) = arny_fused_gpu::rms_norm(&x, &w.device, self.cfg.rms_eps) {
            return y;
        }
        let rms = x
            .clone()
            .square()
            .mean_dim(1)
            .add_scalar(self.cfg.rms_eps)
            .sqrt();
        (x / rms) * w.device.clone().unsqueeze_dim::<2>(0)
    }

    /// RoPE's cosines and sines for positions `start..start + seq` at
    /// `base`, `[seq, half]` each, on a device also as tensors. Built once
    /// per forward pass: an upload per layer costs a GPU dearly.
    fn rope_tables(&self, start: usize, seq: usize, base: f32) -> RopeTables {
        let r = &self.cfg.rope;
        let d = self.cfg.head_dim;
        let half = d / 2;
        // As ggml computes it (`ggml_rope_cache_init`), rounding included:
        // theta_i = scale · (p · s^i / factor_i), s = base^(-2/d), the
        // power taken by repeated f32 multiplication.
        let s = base.powf(-2.0 / d as f32);
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for p in start..start + seq {
            let mut theta = p as f32;
            for i in 0..half {
                let factor = r.factors.as_ref().map_or(1.0, |v| v[i]);
                let a = r.freq_scale * (theta / factor);
                cos.push(a.cos());
                sin.push(a.sin());
                theta *= s;
            }
        }
        let device = (!self.on_host).then(|| {
            let t = |v: &[f32]| {
                Tensor::<2>::from_data(TensorData::new(v.to_vec(), [seq, half]), &self.device)
            };
            (t(&cos), t(&sin))
        });
        RopeTables { cos, sin, device }
    }

    /// RoPE on `x: [seq, heads, head_dim]`: adjacent pairs (x[2i],
    /// x[2i+1]) rotate together, or with `neox` x[i] and x[i + d/2]. On
    /// the host as a loop over the values (a dozen tensor ops per call cost
    /// more than the arithmetic at one token), with the same products and
    /// sums as the tensor ops, so the same bits.
    fn rope(&self, x: Tensor<3>, t: &RopeTables) -> Tensor<3> {
        let [s, h, d] = x.dims();
        let neox = self.cfg.rope.neox;
        let Some((cos, sin)) = &t.device else {
            let mut v = x
                .into_data()
                .try_into_vec::<f32>()
                .expect("f32 activations");
            let half = d / 2;
            for (i, row) in v.chunks_exact_mut(h * d).enumerate() {
                let (cos, sin) = (&t.cos[i * half..][..half], &t.sin[i * half..][..half]);
                for head in row.chunks_exact_mut(d) {
                    for j in 0..half {
                        let (a, b) = if neox {
                            (j, j + half)
                        } else {
                            (2 * j, 2 * j + 1)
                        };
                        let (x0, x1) = (head[a], head[b]);
                        head[a] = x0 * cos[j] - x1 * sin[j];
                        head[b] = x0 * sin[j] + x1 * cos[j];
                    }
                }
            }
            return Tensor::from_data(TensorData::new(v, [s, h, d]), &self.device);
        };
        // One launch on a CubeCL device where about eight tensor ops were.
        #[cfg(feature = "wgpu")]
        if let Ok(y) = arny_fused_gpu::rope(&x, cos, sin, neox) {
            return y;
        }
        // The tables broadcast over heads: `[seq, 1, 1, half]` against
        // NeoX halves, `[seq, 1, half, 1]` against adjacent pairs.
        let (x, axis, table) = if neox {
            (x.reshape([s, h, 2, d / 2]), 2, [s, 1, 1, d / 2])
        } else {
            (x.reshape([s, h, d / 2, 2]), 3, [s, 1, d / 2, 1])
        };
        let (cos, sin) = (cos.clone().reshape(table), sin.clone().reshape(table));
        let x0 = x.clone().narrow(axis, 0, 1);
        let x1 = x.narrow(axis, 1, 1);
        let r0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
        let r1 = x0 * sin.clone() + x1 * cos.clone();
        Tensor::cat(vec![r0, r1], axis).reshape([s, h, d])
    }

    /// Runs `tokens` (appended after what `cache` holds) and returns the
    /// logits of the last `rows` positions: `[rows, vocab]`. With `lora`,
    /// every adapted projection adds its low-rank delta.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        rows: usize,
        lora: Option<&Lora>,
    ) -> Tensor<2> {
        let (s, past) = (tokens.len(), cache.len);
        let c = &self.cfg;
        let e = c.n_embd;
        let mut emb = self.embeddings.lookup(tokens, e);
        if let Some(scale) = c.embed_scale {
            emb.iter_mut().for_each(|x| *x *= scale);
        }
        let mut x = Tensor::<2>::from_data(TensorData::new(emb, [s, e]), &self.device);
        // The host attention sees exactly the positions each query may.
        let mask = |window| (!self.on_host).then(|| self.causal_mask(past, s, window));
        let step = Step {
            past,
            seq: s,
            positions: cache.positions,
            global: Attend {
                mask: mask(None),
                rope: self.rope_tables(past, s, c.rope.base),
                window: None,
            },
            sliding: c.sliding_window.map(|w| Attend {
                mask: mask(Some(w)),
                rope: self.rope_tables(past, s, c.rope.base_swa),
                window: Some(w),
            }),
        };
        for (l, b) in self.blocks.iter().enumerate() {
            let delta = lora.map(|a| &a.blocks[l]);
            x = self.block(b, delta, x, &mut cache.layers[l], &step);
        }
        cache.len = past + s;
        let rows = rows.min(s);
        let x = x.narrow(0, s - rows, rows);
        let x = self.rms_norm(x, &self.out_norm);
        let logits = self.lm_head.forward(x);
        match c.logit_softcap {
            Some(cap) => logits.div_scalar(cap).tanh().mul_scalar(cap),
            None => logits,
        }
    }

    /// Query `i` (absolute position `p = past + i`) sees keys `0..=p`, or
    /// `p - window + 1..=p` in a sliding layer: 0 or -inf, `[1, group ·
    /// seq, past + seq]`, the `seq` rows repeated for each of the `group`
    /// query heads that share a KV head.
    fn causal_mask(&self, past: usize, seq: usize, window: Option<usize>) -> Tensor<3> {
        let total = past + seq;
        let group = self.cfg.n_head / self.cfg.n_head_kv;
        let mut rows = vec![0f32; seq * total];
        for i in 0..seq {
            let p = past + i;
            let first = window.map_or(0, |w| (p + 1).saturating_sub(w));
            for j in (0..first).chain(p + 1..total) {
                rows[i * total + j] = f32::NEG_INFINITY;
            }
        }
        let mask = rows.repeat(group);
        Tensor::<3>::from_data(TensorData::new(mask, [1, group * seq, total]), &self.device)
    }

    /// One block: pre-norm attention and pre-norm MLP, each added back
    /// (Gemma normalizes each output again before adding it).
    fn block(
        &self,
        b: &Block,
        lora: Option<&BlockLora>,
        x: Tensor<2>,
        kv: &mut LayerKv,
        step: &Step,
    ) -> Tensor<2> {
        let post = |y: Tensor<2>, n: &Option<Norm>| match n {
            Some(n) => self.rms_norm(y, n),
            None => y,
        };
        let h = self.rms_norm(x.clone(), &b.attn_norm);
        let attend = match (&step.sliding, b.sliding) {
            (Some(a), true) => a,
            _ => &step.global,
        };
        let x = x + post(
            self.attention(b, lora, h, kv, step, attend),
            &b.attn_post_norm,
        );
        let h = self.rms_norm(x.clone(), &b.ffn_norm);
        x + post(self.mlp(b, lora, h), &b.ffn_post_norm)
    }

    /// Grouped-query attention over the cached and the new positions; the
    /// new keys and values are appended to the cache.
    fn attention(
        &self,
        b: &Block,
        lora: Option<&BlockLora>,
        h: Tensor<2>,
        kv: &mut LayerKv,
        step: &Step,
        attend: &Attend,
    ) -> Tensor<2> {
        let c = &self.cfg;
        let (s, hd) = (step.seq, c.head_dim);
        let delta = |p: Proj| lora.and_then(|l| l.get(p));
        let [q, k, v] = self.project_many(
            h,
            [
                (&b.wq, delta(Proj::Q)),
                (&b.wk, delta(Proj::K)),
                (&b.wv, delta(Proj::V)),
            ],
        );
        let heads = |mut y: Tensor<2>,
                     n: usize,
                     bias: Option<&Tensor<1>>,
                     norm: Option<&Norm>,
                     rope: bool| {
            if let Some(bias) = bias {
                y = y + bias.clone().unsqueeze_dim::<2>(0);
            }
            if let Some(norm) = norm {
                y = self.rms_norm(y.reshape([s * n, hd]), norm);
            }
            let y = y.reshape([s, n, hd]);
            if rope { self.rope(y, &attend.rope) } else { y }
        };
        let bias = |i: usize| b.qkv_bias.as_ref().map(|v| &v[i]);
        let norm = |i: usize| b.qk_norm.as_ref().map(|v| &v[i]);
        let q = heads(q, c.n_head, bias(0), norm(0), true);
        let k = heads(k, c.n_head_kv, bias(1), norm(1), true);
        let v = heads(v, c.n_head_kv, bias(2), None, false);
        let attn = match kv {
            LayerKv::Device { k: kc, v: vc } => {
                let heads_first = |t: Tensor<3>| t.swap_dims(0, 1);
                let (k, v) = (heads_first(k), heads_first(v));
                self.device_attention(q, k, v, kc, vc, step, attend)
            }
            LayerKv::Host { k: kc, v: vc } => self.host_attention(q, k, v, kc, vc, step, attend),
        };
        self.project(attn, &b.wo, delta(Proj::O))
    }

    /// Attention on the device (wgpu): `q: [s, n_head, hd]`, the new `k`,
    /// `v: [n_head_kv, s, hd]` appended to the cache; `[s, q_dim]`. Up to
    /// [`FUSED_ATTENTION_ROWS`] positions in one kernel, more (a prompt) as
    /// tensor ops, whose matmuls share each key's reads between positions.
    #[allow(clippy::too_many_arguments)]
    fn device_attention(
        &self,
        q: Tensor<3>,
        k: Tensor<3>,
        v: Tensor<3>,
        k_cache: &mut Option<Tensor<3>>,
        v_cache: &mut Option<Tensor<3>>,
        step: &Step,
        attend: &Attend,
    ) -> Tensor<2> {
        let c = &self.cfg;
        let (s, hd, kv) = (step.seq, c.head_dim, c.n_head_kv);
        let (past, total) = (step.past, step.past + step.seq);
        // The new positions written in place into room held for them
        // (Burn assigns into a tensor nothing else holds without a copy);
        // only when the room runs out is what is there copied, into room
        // for KV_GROWTH more.
        let append = |cache: &mut Option<Tensor<3>>, new: Tensor<3>| {
            // A cache that lost its tensors (a panic between the take and
            // the store below) must not pass for zeros.
            assert!(
                past == 0 || cache.is_some(),
                "the KV cache holds {past} positions but no tensors"
            );
            let room = match cache.take() {
                Some(held) if held.dims()[1] >= total => held,
                held => {
                    let cap = total
                        .next_multiple_of(KV_GROWTH)
                        .min(step.positions.max(total));
                    let grown = Tensor::<3>::zeros([kv, cap, hd], &self.device);
                    match held {
                        Some(held) if past > 0 => {
                            grown.slice_assign([0..kv, 0..past, 0..hd], held.narrow(1, 0, past))
                        }
                        _ => grown,
                    }
                }
            };
            let all = room.slice_assign([0..kv, past..total, 0..hd], new);
            *cache = Some(all.clone());
            all
        };
        let (k, v) = (append(k_cache, k), append(v_cache, v));
        let mask = attend.mask.clone().expect("device attention has a mask");
        #[cfg(feature = "wgpu")]
        if s <= FUSED_ATTENTION_ROWS
            && let Ok(y) = arny_fused_gpu::attention(&q, &k, &v, total, &mask, c.attn_scale)
        {
            return y.reshape([s, c.q_dim()]);
        }
        let (k, v) = (k.narrow(1, 0, total), v.narrow(1, 0, total));
        // Each KV head serves `group` consecutive query heads: their rows
        // stacked, `[n_head_kv, group · s, hd]`, attend to that head's keys
        // without copying them `group` times.
        let group = c.n_head / c.n_head_kv;
        let q = q.swap_dims(0, 1).reshape([c.n_head_kv, group * s, hd]);
        let scores = q.matmul(k.swap_dims(1, 2)).mul_scalar(c.attn_scale) + mask;
        let attn = softmax(scores, 2).matmul(v).reshape([c.n_head, s, hd]);
        attn.swap_dims(0, 1).reshape([s, c.q_dim()])
    }

    /// Attention on the host (the CPU backend), llama.cpp's arithmetic:
    /// each query over exactly the positions it sees, in position order,
    /// with llama.cpp's f16 rounding; a batch of fewer than
    /// [`LLAMA_FA_TILE_ROWS`] new positions takes its one-row path
    /// ([`attend_one_row`]), a larger one the f32 sums of its tiled path.
    /// Within either, a row's result does not depend on what else is in its
    /// batch (8-bit activations in the next layer would turn a last-bit
    /// difference into a rounding step); across the two, as in llama.cpp, a
    /// prompt fed in small pieces and one fed whole can differ in the last
    /// bits. Per token only the new keys and values are copied. `q: [s,
    /// n_head, hd]`, `k`, `v: [s, n_head_kv, hd]`, as the projections lay
    /// them out (no transposed copies).
    #[allow(clippy::too_many_arguments)]
    fn host_attention(
        &self,
        q: Tensor<3>,
        k: Tensor<3>,
        v: Tensor<3>,
        k_cache: &mut [Vec<f32>],
        v_cache: &mut [Vec<f32>],
        step: &Step,
        attend: &Attend,
    ) -> Tensor<2> {
        let c = &self.cfg;
        let (s, hd, past) = (step.seq, c.head_dim, step.past);
        let host = |t: Tensor<3>| {
            t.into_data()
                .try_into_vec::<f32>()
                .expect("f32 activations")
        };
        let (q, k, v) = (host(q), host(k), host(v));
        let kv_width = c.n_head_kv * hd;
        // Keys and values rounded to f16 on the way in, as llama.cpp's
        // cache holds them (its default F16 K and V types).
        let f16 = |x: &f32| half::f16::from_f32(*x).to_f32();
        for h in 0..c.n_head_kv {
            for i in 0..s {
                let at = i * kv_width + h * hd;
                k_cache[h].extend(k[at..at + hd].iter().map(f16));
                v_cache[h].extend(v[at..at + hd].iter().map(f16));
            }
        }
        let (k_cache, v_cache) = (&*k_cache, &*v_cache);
        let group = c.n_head / c.n_head_kv;
        let (scale, window) = (c.attn_scale, attend.window);
        // A task: one query head's rows `lo..lo + ATTENTION_ROWS`, `[rows,
        // hd]`. Rows of a prompt rather than whole heads: 9 heads on two
        // threads left one idle for a ninth of a prompt's attention, and
        // later rows (more keys) cost more. A row's arithmetic does not
        // depend on its task.
        let blocks = s.div_ceil(ATTENTION_ROWS);
        let task = |t: usize| {
            let (h, lo) = (t / blocks, (t % blocks) * ATTENTION_ROWS);
            let rows = ATTENTION_ROWS.min(s - lo);
            let (keys, values) = (&k_cache[h / group], &v_cache[h / group]);
            let mut out = vec![0f32; rows * hd];
            let mut w = Vec::with_capacity(past + s);
            for (r, o) in out.chunks_exact_mut(hd).enumerate() {
                let i = lo + r;
                let p = past + i;
                let first = window.map_or(0, |win| (p + 1).saturating_sub(win));
                let qi = &q[(i * c.n_head + h) * hd..(i * c.n_head + h + 1) * hd];
                if s < LLAMA_FA_TILE_ROWS {
                    let kv = keys.chunks_exact(hd).zip(values.chunks_exact(hd));
                    attend_one_row(qi, kv.take(p + 1).skip(first), scale, o);
                    continue;
                }
                w.clear();
                w.extend(
                    keys.chunks_exact(hd)
                        .take(p + 1)
                        .skip(first)
                        .map(|kp| dot(qi, kp) * scale),
                );
                // Not `f32::max`: a call to `fmaxf` on wasm32.
                let max = w
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
                let mut sum = 0f32;
                for x in &mut w {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                for (&wp, vp) in w.iter().zip(values.chunks_exact(hd).skip(first)) {
                    for (o, &x) in o.iter_mut().zip(vp) {
                        *o += wp * x;
                    }
                }
                let inv = 1.0 / sum;
                o.iter_mut().for_each(|x| *x *= inv);
            }
            out
        };
        let tasks = c.n_head * blocks;
        #[cfg(not(target_family = "wasm"))]
        let per_task: Vec<Vec<f32>> = {
            use rayon::prelude::*;
            (0..tasks).into_par_iter().map(task).collect()
        };
        // A page's tasks on its workers, where it has them.
        #[cfg(all(target_family = "wasm", target_feature = "atomics"))]
        let per_task: Vec<Vec<f32>> = {
            let slots: Vec<std::sync::OnceLock<Vec<f32>>> =
                (0..tasks).map(|_| std::sync::OnceLock::new()).collect();
            arny_qmatmul::pool::for_each(tasks, &|t| {
                slots[t].get_or_init(|| task(t));
            });
            slots
                .into_iter()
                .map(|s| s.into_inner().expect("the pool runs every task"))
                .collect()
        };
        #[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
        let per_task: Vec<Vec<f32>> = (0..tasks).map(task).collect();
        // `[s, n_head · hd]`: row i holds every head's output for query i.
        let width = c.q_dim();
        let mut out = vec![0f32; s * width];
        for (t, o) in per_task.iter().enumerate() {
            let (h, lo) = (t / blocks, (t % blocks) * ATTENTION_ROWS);
            for (r, row) in o.chunks_exact(hd).enumerate() {
                let i = lo + r;
                out[i * width + h * hd..i * width + (h + 1) * hd].copy_from_slice(row);
            }
        }
        Tensor::from_data(TensorData::new(out, [s, width]), &self.device)
    }

    /// The gated MLP: `down(act(gate(h)) * up(h))`.
    fn mlp(&self, b: &Block, lora: Option<&BlockLora>, h: Tensor<2>) -> Tensor<2> {
        let delta = |p: Proj| lora.and_then(|l| l.get(p));
        let [gate, up] = self.project_many(
            h,
            [(&b.w_gate, delta(Proj::Gate)), (&b.w_up, delta(Proj::Up))],
        );
        self.project(self.gated(gate, up), &b.w_down, delta(Proj::Down))
    }

    /// `act(gate) * up`, SiLU or GELU (tanh form). On the host in one
    /// pass, as llama.cpp's CPU computes them: SiLU as `x / (1 + e^-x)`,
    /// GELU with the input rounded to f16 and looked up in a table of f16
    /// results (exact outside ±10); on a device, the formulas in f32.
    fn gated(&self, gate: Tensor<2>, up: Tensor<2>) -> Tensor<2> {
        if !self.on_host {
            // One launch on a CubeCL device where five to seven were.
            #[cfg(feature = "wgpu")]
            {
                let act = match self.cfg.activation {
                    Activation::SwiGlu => arny_fused_gpu::Gate::Silu,
                    Activation::GeGlu => arny_fused_gpu::Gate::GeluTanh,
                };
                if let Ok(y) = arny_fused_gpu::gated(&gate, &up, act) {
                    return y;
                }
            }
            let gate = match self.cfg.activation {
                Activation::SwiGlu => silu(gate),
                Activation::GeGlu => {
                    let x = gate;
                    let inner = (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044_715))
                        .mul_scalar((2.0 / std::f32::consts::PI).sqrt());
                    x.clone().mul_scalar(0.5) * (inner.tanh().add_scalar(1.0))
                }
            };
            return gate * up;
        }
        let dims = gate.dims();
        let host = |t: Tensor<2>| {
            t.into_data()
                .try_into_vec::<f32>()
                .expect("f32 activations")
        };
        let (mut g, u) = (host(gate), host(up));
        let act: fn(f32) -> f32 = match self.cfg.activation {
            Activation::SwiGlu => |x| x / (1.0 + (-x).exp()),
            Activation::GeGlu => gelu_like_ggml,
        };
        let apply = |g: &mut [f32], u: &[f32]| {
            for (g, &u) in g.iter_mut().zip(u) {
                *g = act(*g) * u;
            }
        };
        // A prompt's values on the caller's rayon pool (on the caller alone
        // the exponentials were 1.6% of a two-thread prefill's samples, the
        // other thread idle); one value's result does not depend on where.
        #[cfg(not(target_family = "wasm"))]
        if g.len() >= GATED_CHUNK * 2 && rayon::current_num_threads() > 1 {
            use rayon::prelude::*;
            g.par_chunks_mut(GATED_CHUNK)
                .zip(u.par_chunks(GATED_CHUNK))
                .for_each(|(g, u)| apply(g, u));
            return Tensor::from_data(TensorData::new(g, dims), &self.device);
        }
        apply(&mut g, &u);
        Tensor::from_data(TensorData::new(g, dims), &self.device)
    }

    /// [`Self::project`] for projections of one input (Q, K, V; gate and
    /// up). With packed weights on the host the input is read back and
    /// quantized to 8 bits once for all of them instead of once each.
    fn project_many<const N: usize>(
        &self,
        x: Tensor<2>,
        ws: [(&Linear, Option<&LowRank>); N],
    ) -> [Tensor<2>; N] {
        let packed = ws.map(|(w, _)| match w {
            Linear::Packed(q) if self.on_host => Some(q),
            _ => None,
        });
        if packed.iter().any(Option::is_none) {
            return ws.map(|(w, d)| self.project(x.clone(), w, d));
        }
        let packed = packed.map(|q| q.expect("all packed"));
        let [m, cols] = x.dims();
        let xs = x
            .clone()
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32 activations");
        let kernel = arny_qmatmul::Kernel::detect();
        // One quantization per activation kind the matrices read.
        let mut quantized: Vec<arny_qmatmul::Activations> = Vec::new();
        let which: [usize; N] = std::array::from_fn(|i| {
            let kind = packed[i].ty().activation();
            quantized
                .iter()
                .position(|a| a.kind() == kind)
                .unwrap_or_else(|| {
                    quantized.push(arny_qmatmul::Activations::quantize(kind, &xs, m, cols));
                    quantized.len() - 1
                })
        });
        #[cfg(all(target_family = "wasm", target_feature = "atomics"))]
        if m == 1
            && let Some(ys) = self.project_on_workers(
                &xs,
                std::array::from_fn(|i| (&quantized[which[i]], packed[i], ws[i].1)),
                false,
            )
        {
            return ys;
        }
        std::array::from_fn(|i| {
            let (w, (_, delta)) = (packed[i], &ws[i]);
            let mut out = vec![0f32; m * w.rows()];
            arny_qmatmul::matmul_quantized(kernel, &quantized[which[i]], w, &mut out);
            if let Some(LowRank::Host(h)) = delta {
                h.add_to(&xs, m, &mut out);
            }
            let y = Tensor::from_data(TensorData::new(out, [m, w.rows()]), &self.device);
            match delta {
                Some(d @ LowRank::Device { .. }) => y + d.delta(x.clone()),
                _ => y,
            }
        })
    }

    /// A page's decode step with workers: the products of one input and
    /// their LoRA deltas' columns as one job ([`arny_qmatmul::matvec_many`])
    /// instead of a job per matrix and per delta. `apart`: each delta summed
    /// on its own and then added, as [`Self::project`] does; else added
    /// term by term, as [`Self::project_many`] does. Either way the same
    /// operations in the same order as on one thread, so the same bits.
    /// `None` where a delta is not an f32 one on the host.
    #[cfg(all(target_family = "wasm", target_feature = "atomics"))]
    fn project_on_workers<const N: usize>(
        &self,
        xs: &[f32],
        parts: [(&arny_qmatmul::Activations, &QMatrix, Option<&LowRank>); N],
        apart: bool,
    ) -> Option<[Tensor<2>; N]> {
        if arny_qmatmul::pool::workers() == 0 {
            return None;
        }
        let mut deltas: [Option<RowDelta<'_>>; N] = std::array::from_fn(|_| None);
        for (slot, (_, _, delta)) in deltas.iter_mut().zip(&parts) {
            match delta {
                None => {}
                Some(LowRank::Host(h)) => *slot = Some(h.project_down(xs)?),
                Some(LowRank::Device { .. }) => return None,
            }
        }
        let mut outs: [Vec<f32>; N] = std::array::from_fn(|i| vec![0f32; parts[i].1.rows()]);
        let mut products: Vec<arny_qmatmul::Matvec<'_>> = outs
            .iter_mut()
            .zip(&parts)
            .map(|(out, &(acts, w, _))| arny_qmatmul::Matvec { acts, w, out })
            .collect();
        arny_qmatmul::matvec_many(
            arny_qmatmul::Kernel::detect(),
            &mut products,
            &|p, first, piece| {
                if let Some(d) = &deltas[p] {
                    d.add_columns(first, piece, apart);
                }
            },
        );
        Some(outs.map(|o| {
            let n = o.len();
            Tensor::from_data(TensorData::new(o, [1, n]), &self.device)
        }))
    }

    /// `x @ w`, plus `(x @ A) @ B` when the projection is adapted. The
    /// delta runs in f32 whatever the weights' precision: it is small, and
    /// rounding it to f16 would blur the few bits a fine-tune changes.
    fn project(&self, x: Tensor<2>, w: &Linear, delta: Option<&LowRank>) -> Tensor<2> {
        #[cfg(all(target_family = "wasm", target_feature = "atomics"))]
        if let (Linear::Packed(q), true, Some(LowRank::Host(_))) = (w, self.on_host, delta)
            && x.dims()[0] == 1
            && arny_qmatmul::pool::workers() > 0
        {
            let xs = x
                .clone()
                .into_data()
                .try_into_vec::<f32>()
                .expect("f32 activations");
            let acts = arny_qmatmul::Activations::quantize(q.ty().activation(), &xs, 1, q.cols());
            if let Some([y]) = self.project_on_workers(&xs, [(&acts, q, delta)], true) {
                return y;
            }
        }
        match delta {
            None => w.forward(x),
            Some(d) => {
                let low = d.delta(x.clone());
                w.forward(x) + low
            }
        }
    }
}

/// A delta's factors on the host (the CPU backend): `a` is `r` rows of
/// `in` (`Aᵀ`, as the file has it), `b` is `r` rows of `out` (`B`
/// transposed), so both steps run along contiguous rows: `r` dot products,
/// then `r` scaled row additions (no short sums). Burn's CPU matmul on
/// these thin shapes is the `gemm` crate, whose wasm32 code is scalar: a
/// tenth of a page's token.
struct HostLowRank {
    a: Factor,
    b: Factor,
    r: usize,
    /// The adapter's scale, applied to `B`'s values as they are read.
    scale: f32,
}

/// A factor's values: f16 where every value is one exactly (an adapter
/// stored in f16, as `arny tune` writes them: half the memory, and half the
/// bytes a token reads), else f32. Not on wasm32: there the conversion is
/// lanes of bit operations, and it cost a page's token more than the bytes
/// it saved (3.6 ms a token in Chromium's profiler, against 2.2 ms for the
/// whole f32 delta).
enum Factor {
    #[cfg_attr(target_family = "wasm", expect(dead_code, reason = "f32 on wasm32"))]
    F16(Vec<u16>),
    F32(Vec<f32>),
}

impl Factor {
    #[cfg(target_family = "wasm")]
    fn new(values: Vec<f32>) -> Self {
        Self::F32(values)
    }

    #[cfg(not(target_family = "wasm"))]
    fn new(values: Vec<f32>) -> Self {
        let halves: Option<Vec<u16>> = values
            .iter()
            .map(|&v| {
                let h = half::f16::from_f32(v);
                (h.to_f32().to_bits() == v.to_bits()).then_some(h.to_bits())
            })
            .collect();
        match halves {
            Some(h) => Self::F16(h),
            None => Self::F32(values),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::F16(v) => v.len(),
            Self::F32(v) => v.len(),
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Self::F16(v) => 2 * v.len() as u64,
            Self::F32(v) => 4 * v.len() as u64,
        }
    }

    /// Row `k` of `n` values, in f32: converted into `scratch` if need be.
    fn row<'a>(&'a self, k: usize, n: usize, scratch: &'a mut [f32]) -> &'a [f32] {
        match self {
            Self::F32(v) => &v[k * n..(k + 1) * n],
            Self::F16(v) => {
                // `half` converts with F16C on x86-64 and the CPU's own
                // instructions on aarch64 where it finds them.
                use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
                let h = v[k * n..(k + 1) * n].reinterpret_cast::<half::f16>();
                h.convert_to_f32_slice(&mut scratch[..n]);
                &scratch[..n]
            }
        }
    }
}

impl HostLowRank {
    /// `out[i] += (x[i] · A) · B` for the `m` rows of `x`. Each factor row
    /// is converted once for all the rows; every output value still sums
    /// its `r` terms in order, so a batch gives a row's bits.
    fn add_to(&self, x: &[f32], m: usize, out: &mut [f32]) {
        let (n_in, n_out) = (x.len() / m, out.len() / m);
        // A page's decode step with workers: the `r` sums, then `B`'s
        // columns split over the threads (the delta was a tenth of the
        // page's token once the matmuls ran on two threads). The same
        // operations in the same order, so the same bits.
        #[cfg(all(target_family = "wasm", target_feature = "atomics"))]
        if m == 1
            && arny_qmatmul::pool::workers() > 0
            && let Some(d) = self.project_down(x)
        {
            arny_qmatmul::for_each_chunk(out, 64, |first, piece| {
                d.add_columns(first, piece, false)
            });
            return;
        }
        let (mut sa, mut sb) = (vec![0f32; n_in], vec![0f32; n_out]);
        for k in 0..self.r {
            let ak = self.a.row(k, n_in, &mut sa);
            let bk = self.b.row(k, n_out, &mut sb);
            for (xi, oi) in x.chunks_exact(n_in).zip(out.chunks_exact_mut(n_out)) {
                let t = dot(xi, ak);
                for (o, &w) in oi.iter_mut().zip(bk) {
                    *o += t * (w * self.scale);
                }
            }
        }
    }
}

#[cfg(all(target_family = "wasm", target_feature = "atomics"))]
impl HostLowRank {
    /// `x · A` for one row `x`, where both factors are f32: what a decode
    /// step's delta needs before its columns ([`RowDelta::add_columns`]).
    fn project_down(&self, x: &[f32]) -> Option<RowDelta<'_>> {
        match (&self.a, &self.b) {
            (Factor::F32(a), Factor::F32(b)) if a.len() == x.len() * self.r => Some(RowDelta {
                t: a.chunks_exact(x.len()).map(|ak| dot(x, ak)).collect(),
                b,
                scale: self.scale,
            }),
            _ => None,
        }
    }
}

/// A delta for one row, its `x · A` done: `t`, and `B` (`r` rows).
#[cfg(all(target_family = "wasm", target_feature = "atomics"))]
struct RowDelta<'a> {
    t: Vec<f32>,
    b: &'a [f32],
    scale: f32,
}

#[cfg(all(target_family = "wasm", target_feature = "atomics"))]
impl RowDelta<'_> {
    /// Adds the delta's columns `first..first + out.len()`: term by term
    /// into `out`, as [`HostLowRank::add_to`] does, or (`apart`) summed from
    /// zero and then added, as [`LowRank::delta`] and a tensor addition do.
    /// The same operations per value in the same order as those.
    fn add_columns(&self, first: usize, out: &mut [f32], apart: bool) {
        let n_out = self.b.len() / self.t.len();
        let add = |first: usize, out: &mut [f32]| {
            for (k, &tk) in self.t.iter().enumerate() {
                let bk = &self.b[k * n_out + first..][..out.len()];
                for (o, &w) in out.iter_mut().zip(bk) {
                    *o += tk * (w * self.scale);
                }
            }
        };
        if !apart {
            return add(first, out);
        }
        for (c, piece) in out.chunks_mut(64).enumerate() {
            let mut sum = [0f32; 64];
            let sum = &mut sum[..piece.len()];
            add(first + 64 * c, sum);
            for (o, d) in piece.iter_mut().zip(sum.iter()) {
                *o += d;
            }
        }
    }
}

/// Query rows per attention task (see `host_attention`).
const ATTENTION_ROWS: usize = 32;

/// Values per task of the gated activation in a prompt.
#[cfg(not(target_family = "wasm"))]
const GATED_CHUNK: usize = 8192;

/// The seven projections of a block, as GGUF names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    const ALL: [Proj; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    fn gguf_name(self) -> &'static str {
        match self {
            Self::Q => "attn_q",
            Self::K => "attn_k",
            Self::V => "attn_v",
            Self::O => "attn_output",
            Self::Gate => "ffn_gate",
            Self::Up => "ffn_up",
            Self::Down => "ffn_down",
        }
    }

    /// `blk.N.attn_q.weight` → (N, Q).
    fn parse(name: &str) -> Option<(usize, Self)> {
        let rest = name.strip_prefix("blk.")?.strip_suffix(".weight")?;
        let (layer, proj) = rest.split_once('.')?;
        let p = Self::ALL.into_iter().find(|p| p.gguf_name() == proj)?;
        Some((layer.parse().ok()?, p))
    }
}

/// One adapted weight's delta, with the adapter's scale folded into `B`.
// A few hundred per adapter, each allocated once: their size is no concern.
#[allow(clippy::large_enum_variant)]
enum LowRank {
    /// On the device (wgpu): `A: [in, r]`, `B: [r, out]`.
    Device { a: Tensor<2>, b: Tensor<2> },
    /// On the host (the CPU backend).
    Host(HostLowRank),
}

impl LowRank {
    /// `(x @ A) @ B` for `x: [m, in]`.
    fn delta(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Device { a, b } => x.matmul(a.clone()).matmul(b.clone()),
            Self::Host(h) => {
                let [m, _] = x.dims();
                let device = x.device();
                let xs = x
                    .into_data()
                    .try_into_vec::<f32>()
                    .expect("f32 activations");
                let mut out = vec![0f32; m * h.b.len() / h.r];
                h.add_to(&xs, m, &mut out);
                let n_out = out.len() / m;
                Tensor::from_data(TensorData::new(out, [m, n_out]), &device)
            }
        }
    }
}

/// A block's adapted projections.
#[derive(Default)]
struct BlockLora {
    deltas: [Option<LowRank>; 7],
}

impl BlockLora {
    fn get(&self, p: Proj) -> Option<&LowRank> {
        self.deltas[p as usize].as_ref()
    }
}

/// A LoRA adapter's deltas on the model's device: in f32 on a GPU, as
/// stored (f16, or f32 where a value needs it) on the host. GGUF stores the
/// Q and K deltas' `B` rows permuted as llama.cpp wants, the same way as
/// the base weights they add to, so they apply as they are.
pub struct Lora {
    blocks: Vec<BlockLora>,
    /// Bytes the deltas take on the device.
    pub device_bytes: u64,
}

impl Lora {
    /// The deltas of `lora` (parsed from `file`'s header, checked against
    /// the base's) for `model`, scaled by `scale` (`alpha / rank` times the
    /// caller's). A scale of 0 keeps nothing: the session is the base.
    pub fn load(
        model: &Decoder,
        file: &GgufFile,
        bytes: &[u8],
        lora: &LoraFile,
        scale: f32,
        source: &str,
    ) -> Result<Self, EngineError> {
        let mut blocks: Vec<BlockLora> = (0..model.cfg.n_layer)
            .map(|_| BlockLora::default())
            .collect();
        let mut device_bytes = 0;
        for pair in &lora.pairs {
            let Some((layer, proj)) = Proj::parse(&pair.base).filter(|(l, _)| *l < blocks.len())
            else {
                return Err(EngineError::Unsupported(format!(
                    "the burn engine adapts the blocks' seven projections; {source} also adapts {}",
                    pair.base
                )));
            };
            if scale == 0.0 {
                continue;
            }
            let (n_in, r, n_out) = (
                pair.a.dims[0] as usize,
                pair.a.dims[1] as usize,
                pair.b.dims[1] as usize,
            );
            let data = |t| {
                let v = file
                    .dequantize(bytes, t)
                    .map_err(|e| EngineError::Corrupt {
                        source_name: source.to_string(),
                        reason: e.to_string(),
                    })?;
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(EngineError::Corrupt {
                        source_name: source.to_string(),
                        reason: format!("{} holds non-finite values", pair.base),
                    });
                }
                Ok(v)
            };
            // ggml [n_in, r] is `r` rows of `n_in`, [r, n_out] `n_out`
            // rows of `r`.
            let (a, b) = (data(&pair.a)?, data(&pair.b)?);
            let delta = if model.on_host {
                let mut bt = vec![0f32; b.len()];
                for (o, row) in b.chunks_exact(r).enumerate() {
                    for (k, &w) in row.iter().enumerate() {
                        bt[k * n_out + o] = w;
                    }
                }
                let h = HostLowRank {
                    a: Factor::new(a),
                    b: Factor::new(bt),
                    r,
                    scale,
                };
                device_bytes += h.a.bytes() + h.b.bytes();
                LowRank::Host(h)
            } else {
                device_bytes += WeightPrecision::F32.bytes(r * (n_in + n_out));
                LowRank::Device {
                    a: Tensor::<2>::from_data(TensorData::new(a, [r, n_in]), &model.device)
                        .transpose(),
                    b: Tensor::<2>::from_data(TensorData::new(b, [n_out, r]), &model.device)
                        .transpose()
                        .mul_scalar(scale),
                }
            };
            blocks[layer].deltas[proj as usize] = Some(delta);
        }
        Ok(Self {
            blocks,
            device_bytes,
        })
    }
}

/// What every block of one forward pass shares.
struct Step {
    /// Positions already in the cache.
    past: usize,
    /// New positions.
    seq: usize,
    /// The most positions the cache will hold (its session's context).
    positions: usize,
    /// How the full-attention layers attend.
    global: Attend,
    /// How the sliding-window layers do, when the model has any.
    sliding: Option<Attend>,
}

/// One kind of layer's view of the positions.
struct Attend {
    /// The causal (and window) mask for device attention; none on the host.
    mask: Option<Tensor<3>>,
    rope: RopeTables,
    window: Option<usize>,
}

/// RoPE's cosines and sines, `[seq, head_dim / 2]`, and on a device the
/// same as broadcastable tensors.
struct RopeTables {
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// On a device, `[seq, half]` each.
    device: Option<(Tensor<2>, Tensor<2>)>,
}

/// A device KV cache grows by this many positions at a time.
const KV_GROWTH: usize = 256;

/// Up to this many new positions, attention on a GPU is one kernel
/// (`arny-fused-gpu`'s) rather than eight tensor ops and two copies.
const FUSED_ATTENTION_ROWS: usize = 8;

/// From this many new positions on, llama.cpp's CPU flash attention
/// takes its tiled path (f32 scores and sums over f16 keys and values, as
/// [`Decoder::host_attention`] computes them); below it, its one-row path,
/// which [`attend_one_row`] follows (`GGML_FA_TILE_Q`).
const LLAMA_FA_TILE_ROWS: usize = 64;

/// One query's attention as llama.cpp's one-row CPU flash attention
/// computes it (`ggml_compute_forward_flash_attn_ext_f16_one_chunk` with
/// f16 K and V): the query rounded to f16; an online softmax (a new maximum
/// rescales what is summed); the weighted values summed in f16, rounded
/// after every step; the sum divided out at the end. Decoding runs this
/// path in llama.cpp, so it is what greedy runs must follow to equal
/// llama.cpp's. `kv`: the (key, value) rows the query sees, in order.
fn attend_one_row<'a>(
    q: &[f32],
    kv: impl Iterator<Item = (&'a [f32], &'a [f32])>,
    scale: f32,
    out: &mut [f32],
) {
    let q: Vec<f32> = q.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
    let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
    out.fill(0.0);
    for (k, v) in kv {
        let s = dot(&q, k) * scale;
        let (mut ms, mut vs) = (1f32, 1f32);
        if s > max {
            ms = (max - s).exp();
            max = s;
            out.iter_mut().for_each(|x| *x = f16_precision(*x * ms));
        } else {
            vs = (s - max).exp();
        }
        for (x, &v) in out.iter_mut().zip(v) {
            *x = f16_precision(mul_add(v, vs, *x));
        }
        sum = sum * ms + vs;
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    out.iter_mut().for_each(|x| *x *= inv);
}

/// `x` rounded to f16's 11 significant bits (Veltkamp's split: three f32
/// operations that vectorize, where a conversion per value would cost
/// more than the attention itself; f16's range and subnormals do not
/// arise in these sums).
#[inline]
fn f16_precision(x: f32) -> f32 {
    let t = x * 8193.0;
    t - (t - x)
}

/// `a · b + c`, fused where the CPU has FMA, as ggml's SIMD code is.
#[inline]
fn mul_add(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_feature = "fma")]
    return a.mul_add(b, c);
    #[cfg(not(target_feature = "fma"))]
    return a * b + c;
}

/// ggml's `gelu` on the CPU: `f16(gelu(f16(x)))` inside ±10, looked up
/// as ggml does in a table of every f16 input (`ggml_table_gelu_f16`): the
/// formula's `tanh` per value was a tenth of Gemma 3's prefill.
fn gelu_like_ggml(x: f32) -> f32 {
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    static TABLE: std::sync::OnceLock<Vec<u16>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|h| {
                let x = half::f16::from_bits(h).to_f32();
                half::f16::from_f32(gelu_f16_formula(x)).to_bits()
            })
            .collect()
    });
    let h = table[half::f16::from_f32(x).to_bits() as usize];
    half::f16::from_bits(h).to_f32()
}

/// The formula behind ggml's table, for an input already rounded to f16.
fn gelu_f16_formula(x: f32) -> f32 {
    // ggml's constants, as f32.
    0.5 * x * (1.0 + (0.797_884_6_f32 * x * (1.0 + 0.044_715 * x * x)).tanh())
}

/// `Σ a·b` in eight lanes, added in a fixed order: vectorized, and the same
/// bits whatever the batch.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            lanes[j] += x[j] * y[j];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

/// The same sum in simd128 (LLVM leaves the portable one scalar on wasm32,
/// where the LoRA deltas' dot products were 4% of a page's token): lanes
/// 0–3 and 4–7 in two vectors, each a multiply then an add as above, and
/// the lanes added in the same order, so the bits are the portable ones.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::wasm32::{
        f32x4_add, f32x4_extract_lane, f32x4_mul, f32x4_splat, v128, v128_load,
    };
    let n = a.len().min(b.len());
    let (mut lo, mut hi) = (f32x4_splat(0.0), f32x4_splat(0.0));
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n` keeps both 8-value loads in bounds; wasm
        // loads need no alignment.
        unsafe {
            let (pa, pb) = (
                a.as_ptr().add(i).cast::<v128>(),
                b.as_ptr().add(i).cast::<v128>(),
            );
            lo = f32x4_add(lo, f32x4_mul(v128_load(pa), v128_load(pb)));
            hi = f32x4_add(hi, f32x4_mul(v128_load(pa.add(1)), v128_load(pb.add(1))));
        }
        i += 8;
    }
    let tail: f32 = a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y).sum();
    let lanes = [
        f32x4_extract_lane::<0>(lo),
        f32x4_extract_lane::<1>(lo),
        f32x4_extract_lane::<2>(lo),
        f32x4_extract_lane::<3>(lo),
        f32x4_extract_lane::<0>(hi),
        f32x4_extract_lane::<1>(hi),
        f32x4_extract_lane::<2>(hi),
        f32x4_extract_lane::<3>(hi),
    ];
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values an f16 holds exactly, from a seed (xorshift).
    fn halves(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                half::f16::from_f32((s % 20_001) as f32 / 10_000.0 - 1.0).to_f32()
            })
            .collect()
    }

    #[test]
    fn f16_factors_give_the_f32_factors_bits() {
        let (n_in, n_out, r, m) = (76, 45, 3, 3);
        let (a, b) = (halves(r * n_in, 1), halves(r * n_out, 2));
        let x: Vec<f32> = (0..m * n_in).map(|i| (i as f32 * 0.37).sin()).collect();
        let f16 = HostLowRank {
            a: Factor::new(a.clone()),
            b: Factor::new(b.clone()),
            r,
            scale: 0.3,
        };
        assert!(matches!((&f16.a, &f16.b), (Factor::F16(_), Factor::F16(_))));
        assert_eq!(
            f16.a.bytes() + f16.b.bytes(),
            2 * (r * (n_in + n_out)) as u64
        );
        let f32 = HostLowRank {
            a: Factor::F32(a),
            b: Factor::F32(b),
            r,
            scale: 0.3,
        };
        let base: Vec<f32> = (0..m * n_out).map(|i| i as f32 * 0.01).collect();
        let (mut got, mut want) = (base.clone(), base.clone());
        f16.add_to(&x, m, &mut got);
        f32.add_to(&x, m, &mut want);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want));
        // A batch gives each row's own bits.
        let mut one = base[n_out..2 * n_out].to_vec();
        f16.add_to(&x[n_in..2 * n_in], 1, &mut one);
        assert_eq!(bits(&one), bits(&got[n_out..2 * n_out]));
    }

    #[test]
    fn the_gelu_table_is_the_formula_on_every_f16() {
        for h in 0..=u16::MAX {
            let x = half::f16::from_bits(h).to_f32();
            if !(x > -10.0 && x < 10.0) {
                continue;
            }
            let want = half::f16::from_f32(gelu_f16_formula(x)).to_f32();
            assert_eq!(gelu_like_ggml(x).to_bits(), want.to_bits(), "{x}");
        }
        assert_eq!(gelu_like_ggml(-12.0), 0.0);
        assert_eq!(gelu_like_ggml(11.5), 11.5);
    }

    #[test]
    fn values_without_an_exact_f16_stay_f32() {
        assert!(matches!(Factor::new(vec![0.5, 1.0e-3]), Factor::F32(_)));
        assert!(matches!(Factor::new(vec![0.5, 70_000.0]), Factor::F32(_)));
        assert!(matches!(
            Factor::new(vec![0.5, -0.0, 65_504.0]),
            Factor::F16(_)
        ));
    }
}
