//! # arny-tiny-models
//!
//! Tiny models for tests: a few hundred thousand random weights in one of
//! the architectures Arny runs ([`TinyArch`]: Llama, Llama 3, Qwen2, Qwen3,
//! Gemma 3, Phi-3, each with the tensors and keys its converter writes), with a byte-level BPE vocabulary trained here on a
//! small built-in text, SmolLM2's special tokens (ids 0–2) and its chat
//! template. llama.cpp loads them, and so does every Arny engine, so a test
//! can exercise an engine's plumbing (sessions, caches, sampling, errors)
//! in milliseconds per token where the real model takes seconds on a
//! software GPU. What they say is noise: behaviour is tested on the real
//! model.
//!
//! Everything is deterministic: the same [`TinyModel`] gives the same bytes
//! on every machine, so files made from them (an ExecuTorch export) can be
//! cached by content.
//!
//! The weights are scaled so that the logits spread widely (standard
//! deviation about 8): greedy choices are far from ties, so two engines or
//! two batch shapes agree on them despite rounding, and each block's output
//! is as large as its input, so what the model predicts depends on the
//! context (a broken KV cache changes it).

mod bpe;
mod spm;

use std::io::Write;
use std::path::PathBuf;

use arny_gguf::{GgufWriter, Value};
use sha2::{Digest, Sha256};

pub use bpe::Vocabulary;
pub use spm::SpmVocabulary;

/// SmolLM2's chat template (ChatML with a default system prompt), so the
/// conformance suite's template fixture applies to the tiny model too.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The text the vocabulary is trained on.
const CORPUS: &str = include_str!("corpus.txt");

/// How weights are stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Storage {
    F32,
    F16,
    /// The matrices in ggml's 8-bit and 4-bit block formats, quantized by
    /// its reference quantizers: what the packed kernels read.
    Q8_0,
    Q4_1,
}

/// The architectures a tiny model can have: what llama.cpp's loader
/// expects of each, at a tiny size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TinyArch {
    /// SmolLM2's: separate Q, K, V, SwiGLU, an output matrix.
    Llama,
    /// Llama 3.x: `llama` with Llama 3's RoPE frequency factors
    /// (`rope_freqs.weight`), a 500 000 base and a tied output.
    Llama3,
    /// QKV biases, NeoX RoPE, a tied output.
    Qwen2,
    /// QK-norm, heads wider than `n_embd / n_head` (`key_length`).
    Qwen3,
    /// Gemma 3: embeddings scaled by √n_embd, QK-norm, norms after
    /// attention and MLP, GeGLU, sliding-window layers beside global ones
    /// with their own RoPE base, a tied output, logit soft-capping.
    Gemma3,
    /// Phi-3: fused `attn_qkv` and gate-and-up `ffn_up`.
    Phi3,
}

impl TinyArch {
    pub const ALL: [Self; 6] = [
        Self::Llama,
        Self::Llama3,
        Self::Qwen2,
        Self::Qwen3,
        Self::Gemma3,
        Self::Phi3,
    ];

    /// `general.architecture`.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::Llama | Self::Llama3 => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma3 => "gemma3",
            Self::Phi3 => "phi3",
        }
    }

    /// A name for files and test output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama3 => "llama3",
            other => other.gguf_name(),
        }
    }
}

/// The vocabulary a tiny model carries, in the form its family's
/// converter writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TinyTokenizer {
    /// Byte-level BPE (`gpt2`) with llama.cpp's pre-tokenizer of this name:
    /// `smollm` (SmolLM2), `llama-bpe` (Llama 3), `qwen2` (Qwen2 and 3).
    Bpe { pre: &'static str },
    /// SentencePiece (`llama`): Phi-3 with the space prefix, Gemma without.
    Spm { add_space_prefix: bool },
}

impl TinyTokenizer {
    /// What real models of `arch` carry.
    pub fn of(arch: TinyArch) -> Self {
        match arch {
            TinyArch::Llama => Self::Bpe { pre: "smollm" },
            TinyArch::Llama3 => Self::Bpe { pre: "llama-bpe" },
            TinyArch::Qwen2 | TinyArch::Qwen3 => Self::Bpe { pre: "qwen2" },
            TinyArch::Gemma3 => Self::Spm {
                add_space_prefix: false,
            },
            TinyArch::Phi3 => Self::Spm {
                add_space_prefix: true,
            },
        }
    }
}

/// The shape of a tiny model.
#[derive(Debug, Clone, PartialEq)]
pub struct TinyModel {
    pub arch: TinyArch,
    /// Write SmolLM2's chat template; without it the model is a base model
    /// (plain completion).
    pub chat_template: bool,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    pub tokenizer: TinyTokenizer,
    /// Merges learned on top of the 256 byte tokens and 3 special tokens
    /// (a SentencePiece vocabulary gets the same size).
    pub merges: usize,
    pub context_length: u32,
    pub rope_theta: f32,
    pub storage: Storage,
    pub seed: u64,
}

impl Default for TinyModel {
    /// 2 layers, 64 wide, 4 query heads sharing 2 KV heads, a 512-token
    /// vocabulary, 512 positions: about 0.2 M parameters, under 1 MB.
    fn default() -> Self {
        Self {
            arch: TinyArch::Llama,
            chat_template: true,
            n_layer: 2,
            n_embd: 64,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 192,
            tokenizer: TinyTokenizer::Bpe { pre: "smollm" },
            merges: 253,
            context_length: 512,
            rope_theta: 10_000.0,
            storage: Storage::F32,
            seed: 0x5eed_a27e,
        }
    }
}

impl TinyModel {
    /// A model of `arch` with the default shape (3 layers for Gemma 3, so
    /// that sliding and global layers both occur).
    pub fn of(arch: TinyArch) -> Self {
        Self {
            arch,
            n_layer: if arch == TinyArch::Gemma3 { 3 } else { 2 },
            tokenizer: TinyTokenizer::of(arch),
            ..Self::default()
        }
    }

    /// Per head; Qwen3 and Gemma 3 set it on their own (`key_length`),
    /// here twice `n_embd / n_head`.
    pub fn head_dim(&self) -> usize {
        match self.arch {
            TinyArch::Qwen3 | TinyArch::Gemma3 => 2 * self.n_embd / self.n_head,
            _ => self.n_embd / self.n_head,
        }
    }

    /// Positions a Gemma 3 sliding layer sees.
    pub const SLIDING_WINDOW: usize = 8;

    /// The BPE vocabulary this model gets (with a BPE tokenizer).
    pub fn vocabulary(&self) -> Vocabulary {
        Vocabulary::train(CORPUS, self.merges)
    }

    fn spm_vocabulary(&self) -> SpmVocabulary {
        SpmVocabulary::train(CORPUS, bpe::SPECIAL.len() + 256 + self.merges)
    }

    pub fn vocab_size(&self) -> usize {
        match self.tokenizer {
            TinyTokenizer::Bpe { .. } => self.vocabulary().tokens.len(),
            TinyTokenizer::Spm { .. } => self.spm_vocabulary().tokens.len(),
        }
    }

    /// Every weight, as the parameter counts of llama.cpp and the engines
    /// see them.
    pub fn parameters(&self) -> u64 {
        self.tensors(self.vocab_size())
            .iter()
            .map(|t| t.elements())
            .sum()
    }

    fn tensors(&self, vocab: usize) -> Vec<TensorSpec> {
        let arch = self.arch;
        let (e, hd, ff) = (self.n_embd, self.head_dim(), self.n_ff);
        let (q, kv) = (self.n_head * hd, self.n_head_kv * hd);
        let inv = |n: usize| 1.0 / (n as f32).sqrt();
        let gemma = arch == TinyArch::Gemma3;
        // Gemma multiplies the embeddings by √n_embd: a table that much
        // smaller gives the same unit inputs.
        let embd_std = if gemma { inv(e) } else { 1.0 };
        let mut t = vec![TensorSpec::new(
            "token_embd.weight",
            &[e, vocab],
            Init::Normal(embd_std),
        )];
        if arch == TinyArch::Llama3 {
            // Llama 3's shape: high frequencies kept, low ones divided by
            // up to 8.
            let half = hd / 2;
            let f: Vec<f32> = (0..half)
                .map(|i| 1.0 + 7.0 * i as f32 / (half - 1) as f32)
                .collect();
            t.push(TensorSpec::new(
                "rope_freqs.weight",
                &[half],
                Init::Values(f),
            ));
        }
        for i in 0..self.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            let pb = |s: &str| format!("blk.{i}.{s}.bias");
            t.push(TensorSpec::new(&p("attn_norm"), &[e], Init::Ones));
            // Queries and keys twice the unit scale: attention scores
            // with a spread of about 4, so attention picks positions.
            if arch == TinyArch::Phi3 {
                t.push(TensorSpec::new(
                    &p("attn_qkv"),
                    &[e, q + 2 * kv],
                    Init::Normal(1.5 * inv(e)),
                ));
            } else {
                t.extend([
                    TensorSpec::new(&p("attn_q"), &[e, q], Init::Normal(2.0 * inv(e))),
                    TensorSpec::new(&p("attn_k"), &[e, kv], Init::Normal(2.0 * inv(e))),
                    TensorSpec::new(&p("attn_v"), &[e, kv], Init::Normal(inv(e))),
                ]);
            }
            if arch == TinyArch::Qwen2 {
                t.extend([
                    TensorSpec::new(&pb("attn_q"), &[q], Init::Normal(0.5)),
                    TensorSpec::new(&pb("attn_k"), &[kv], Init::Normal(0.5)),
                    TensorSpec::new(&pb("attn_v"), &[kv], Init::Normal(0.5)),
                ]);
            }
            if matches!(arch, TinyArch::Qwen3 | TinyArch::Gemma3) {
                // Normalized heads have unit size: weights of 2 give the
                // scores their spread back.
                t.extend([
                    TensorSpec::new(&p("attn_q_norm"), &[hd], Init::Const(2.0)),
                    TensorSpec::new(&p("attn_k_norm"), &[hd], Init::Const(2.0)),
                ]);
            }
            t.push(TensorSpec::new(
                &p("attn_output"),
                &[q, e],
                Init::Normal(inv(q)),
            ));
            if gemma {
                t.push(TensorSpec::new(&p("post_attention_norm"), &[e], Init::Ones));
            }
            t.push(TensorSpec::new(&p("ffn_norm"), &[e], Init::Ones));
            if arch == TinyArch::Phi3 {
                t.push(TensorSpec::new(
                    &p("ffn_up"),
                    &[e, 2 * ff],
                    Init::Normal(inv(e)),
                ));
            } else {
                t.extend([
                    TensorSpec::new(&p("ffn_gate"), &[e, ff], Init::Normal(inv(e))),
                    TensorSpec::new(&p("ffn_up"), &[e, ff], Init::Normal(inv(e))),
                ]);
            }
            t.push(TensorSpec::new(
                &p("ffn_down"),
                &[ff, e],
                Init::Normal(inv(ff)),
            ));
            if gemma {
                t.push(TensorSpec::new(&p("post_ffw_norm"), &[e], Init::Ones));
            }
        }
        // A tied output reads the token table: with Gemma's small table, a
        // final norm of 8 gives the logits their spread.
        let out_norm = if gemma { Init::Const(8.0) } else { Init::Ones };
        t.push(TensorSpec::new("output_norm.weight", &[e], out_norm));
        if !self.tied_output() {
            t.push(TensorSpec::new(
                "output.weight",
                &[e, vocab],
                Init::Normal(1.0),
            ));
        }
        t
    }

    /// `general.name`. Not "phi3" for Phi-3: llama.cpp gives a model so
    /// named the attributes of Phi-3's special tokens (`<s>`, `</s>`,
    /// `<|endoftext|>`), which the tiny vocabulary does not have, and fails
    /// to load it without them.
    fn general_name(&self) -> String {
        match self.arch {
            TinyArch::Phi3 => "arny-tiny-phi".into(),
            other => format!("arny-tiny-{}", other.name()),
        }
    }

    /// The output matrix is the token table (no `output.weight`).
    pub fn tied_output(&self) -> bool {
        matches!(
            self.arch,
            TinyArch::Llama3 | TinyArch::Qwen2 | TinyArch::Gemma3
        )
    }

    /// The model as a GGUF file.
    pub fn gguf(&self) -> Vec<u8> {
        assert!(
            self.n_embd.is_multiple_of(self.n_head)
                && self.n_head.is_multiple_of(self.n_head_kv)
                && self.head_dim().is_multiple_of(2),
            "inconsistent tiny model {self:?}"
        );
        let a = self.arch.gguf_name();
        let k = |key: &str| format!("{a}.{key}");
        let vocab = self.vocab_size();
        let mut w = GgufWriter::new();
        let s = |v: &str| Value::String(v.to_string());
        let u = |v: usize| Value::U32(v as u32);
        w.set("general.architecture", s(a))
            .set("general.type", s("model"))
            .set("general.name", Value::String(self.general_name()))
            .set(
                "general.file_type",
                // llama.cpp's `llama_ftype` ids.
                Value::U32(match self.storage {
                    Storage::F32 => 0,
                    Storage::F16 => 1,
                    Storage::Q4_1 => 3,
                    Storage::Q8_0 => 7,
                }),
            )
            .set(k("block_count"), u(self.n_layer))
            .set(k("context_length"), Value::U32(self.context_length))
            .set(k("embedding_length"), u(self.n_embd))
            .set(k("feed_forward_length"), u(self.n_ff))
            .set(k("attention.head_count"), u(self.n_head))
            .set(k("attention.head_count_kv"), u(self.n_head_kv))
            .set(k("attention.layer_norm_rms_epsilon"), Value::F32(1e-5))
            .set(k("rope.dimension_count"), u(self.head_dim()))
            .set(k("vocab_size"), u(vocab));
        match self.arch {
            TinyArch::Llama3 => w.set(k("rope.freq_base"), Value::F32(500_000.0)),
            TinyArch::Gemma3 => w
                .set(k("rope.freq_base"), Value::F32(1_000_000.0))
                .set(k("rope.freq_base_swa"), Value::F32(self.rope_theta))
                .set(k("attention.sliding_window"), u(Self::SLIDING_WINDOW))
                // Layers 0 and 2 slide, layer 1 attends to everything.
                .set(k("attention.sliding_window_pattern"), Value::U32(2))
                .set(k("final_logit_softcapping"), Value::F32(30.0)),
            _ => w.set(k("rope.freq_base"), Value::F32(self.rope_theta)),
        };
        if matches!(self.arch, TinyArch::Qwen3 | TinyArch::Gemma3) {
            w.set(k("attention.key_length"), u(self.head_dim()))
                .set(k("attention.value_length"), u(self.head_dim()));
        }
        match self.tokenizer {
            TinyTokenizer::Bpe { pre } => self.vocabulary().write_to(&mut w, pre),
            TinyTokenizer::Spm { add_space_prefix } => {
                self.spm_vocabulary().write_to(&mut w, add_space_prefix)
            }
        }
        if self.chat_template {
            w.set("tokenizer.chat_template", s(CHAT_TEMPLATE));
        }
        let mut rng = Rng::new(self.seed);
        for t in self.tensors(vocab) {
            let values = t.init.values(t.elements() as usize, &mut rng);
            let dims: Vec<u64> = t.dims.iter().map(|&d| d as u64).collect();
            // Norm weights and biases stay F32, as converters write them.
            match (self.storage, t.dims.len()) {
                (Storage::F16, 2) => w.tensor_f16(t.name, &dims, &values),
                (Storage::Q8_0, 2) => w.tensor_q8_0(t.name, &dims, &values),
                (Storage::Q4_1, 2) => w.tensor_q4_1(t.name, &dims, &values),
                _ => w.tensor_f32(t.name, &dims, &values),
            };
        }
        w.to_bytes()
    }

    /// A short stable name for files made from this model.
    pub fn file_name(&self) -> String {
        let digest = Sha256::digest(self.gguf());
        let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        format!("tiny-{}-{hex}.gguf", self.arch.name())
    }

    /// The model's file in the models folder's `tiny/` directory, written
    /// there first if it is not (atomically, so parallel tests can race).
    pub fn file(&self) -> std::io::Result<PathBuf> {
        let bytes = self.gguf();
        let dir = arny_model_store::models_dir().join("tiny");
        let path = dir.join(self.file_name());
        let current = std::fs::read(&path).is_ok_and(|b| b == bytes);
        if !current {
            std::fs::create_dir_all(&dir)?;
            let tmp = dir.join(format!(".{}.{}", self.file_name(), std::process::id()));
            std::fs::File::create(&tmp)?.write_all(&bytes)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(path)
    }
}

struct TensorSpec {
    name: String,
    dims: Vec<usize>,
    init: Init,
}

impl TensorSpec {
    fn new(name: &str, dims: &[usize], init: Init) -> Self {
        Self {
            name: name.to_string(),
            dims: dims.to_vec(),
            init,
        }
    }

    fn elements(&self) -> u64 {
        self.dims.iter().product::<usize>() as u64
    }
}

#[derive(Clone)]
enum Init {
    Ones,
    Const(f32),
    Normal(f32),
    Values(Vec<f32>),
}

impl Init {
    fn values(&self, n: usize, rng: &mut Rng) -> Vec<f32> {
        match self {
            Init::Ones => vec![1.0; n],
            Init::Const(c) => vec![*c; n],
            Init::Normal(std) => (0..n).map(|_| rng.normal() * std).collect(),
            Init::Values(v) => v.clone(),
        }
    }
}

/// SplitMix64 and Box–Muller: tiny, portable, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.unit(), self.unit());
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arny_gguf::GgufFile;

    #[test]
    fn deterministic_and_readable() {
        let m = TinyModel::default();
        let (a, b) = (m.gguf(), m.gguf());
        assert_eq!(a, b);
        let f = GgufFile::from_bytes(&a).unwrap();
        assert_eq!(f.architecture(), Some("llama"));
        assert_eq!(f.tensors.len(), 3 + 9 * m.n_layer);
        let vocab = f.get("tokenizer.ggml.tokens").unwrap().array_len().unwrap();
        assert_eq!(vocab, 512);
        let params: u64 = f.tensors.iter().map(|t| t.elements()).sum();
        assert_eq!(params, m.parameters());
        assert!(a.len() < 1 << 20, "{} bytes", a.len());
        let other = TinyModel {
            seed: 1,
            ..TinyModel::default()
        };
        assert_ne!(other.file_name(), m.file_name());
    }
}
