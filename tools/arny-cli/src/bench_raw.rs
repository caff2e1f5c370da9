//! The baseline for `arny bench`: the same workload written directly
//! against llama-cpp-2, the way an app without Arny would.

use std::num::NonZeroU32;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use arny_engine_api::TokenId;
use arny_engine_gguf::llama_cpp_2::context::params::LlamaContextParams;
use arny_engine_gguf::llama_cpp_2::llama_batch::LlamaBatch;
use arny_engine_gguf::llama_cpp_2::model::LlamaModel;
use arny_engine_gguf::llama_cpp_2::model::params::LlamaModelParams;
use arny_engine_gguf::llama_cpp_2::sampling::LlamaSampler;
use arny_engine_gguf::llama_cpp_2::token::LlamaToken;

/// Same batch size as the engine uses.
const N_BATCH: u32 = 512;

pub struct RawBench {
    /// The GGUF it runs (for a `.pte` bench, the program's source).
    pub path: std::path::PathBuf,
    model: LlamaModel,
    threads: i32,
    n_ctx: NonZeroU32,
}

impl RawBench {
    pub fn new(path: &Path, threads: u32, n_ctx: u32) -> Result<Self> {
        let backend = arny_engine_gguf::backend()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .context("raw llama.cpp load")?;
        Ok(Self {
            path: path.to_path_buf(),
            model,
            threads: threads as i32,
            n_ctx: NonZeroU32::new(n_ctx).ok_or_else(|| anyhow!("zero context"))?,
        })
    }

    pub fn load_ms(&self, path: &Path) -> Result<f64> {
        let backend = arny_engine_gguf::backend()?;
        let t = Instant::now();
        let m = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        drop(m);
        Ok(ms)
    }

    /// Prefill `tokens`, then greedily generate `n_gen`; returns
    /// (prefill tok/s, decode tok/s) measured as the SDK measures them.
    pub fn run(&self, tokens: &[TokenId], n_gen: usize) -> Result<(f64, f64)> {
        let backend = arny_engine_gguf::backend()?;
        let n_batch = N_BATCH.min(self.n_ctx.get());
        let params = LlamaContextParams::default()
            .with_n_ctx(Some(self.n_ctx))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads);
        let mut ctx = self.model.new_context(backend, params)?;
        let mut batch = LlamaBatch::new(n_batch as usize, 1);
        let mut sampler = LlamaSampler::greedy();

        let t0 = Instant::now();
        let n_chunks = tokens.len().div_ceil(n_batch as usize);
        let mut pos = 0i32;
        for (i, chunk) in tokens.chunks(n_batch as usize).enumerate() {
            batch.clear();
            for (j, &t) in chunk.iter().enumerate() {
                let last = i + 1 == n_chunks && j + 1 == chunk.len();
                batch.add(LlamaToken(t as i32), pos, &[0], last)?;
                pos += 1;
            }
            ctx.decode(&mut batch)?;
        }
        let prefill = t0.elapsed().as_secs_f64();

        let mut token = sampler.sample(&ctx, batch.n_tokens() - 1);
        let first = Instant::now();
        for _ in 1..n_gen {
            batch.clear();
            batch.add(token, pos, &[0], true)?;
            pos += 1;
            ctx.decode(&mut batch)?;
            token = sampler.sample(&ctx, 0);
        }
        let decode = first.elapsed().as_secs_f64();
        Ok((tokens.len() as f64 / prefill, (n_gen - 1) as f64 / decode))
    }
}
