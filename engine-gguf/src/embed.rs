//! Sentence embeddings: a whole text through the model in one batch, the
//! last hidden states mean-pooled by llama.cpp and L2-normalised (as
//! llama.cpp's server and OpenAI's API return them).

use std::num::NonZeroU32;

use arny_engine_api::{EngineError, Result};
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_batch::LlamaBatch;

use crate::ENGINE_ID;
use crate::backend::{backend, clear_last_error, last_llama_error};
use crate::loaded::Inner;

fn engine_err(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::engine(
        ENGINE_ID,
        format!(
            "{what}: {}",
            last_llama_error().unwrap_or_else(|| e.to_string())
        ),
    )
}

pub(crate) fn embed(inner: &Inner, texts: &[String]) -> Result<Vec<Vec<f32>>> {
    if texts.is_empty() {
        return Err(EngineError::InvalidInput("no texts to embed".into()));
    }
    let model = inner.model.read();
    let mut inputs = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        if t.is_empty() {
            return Err(EngineError::InvalidInput(format!("text {i} is empty")));
        }
        // User text: special-token texts stay text.
        let tokens = model.vocab().tokenize(t.as_bytes(), true, false);
        // One batch holds the whole text; llama.cpp would assert on more
        // positions than the model was trained for.
        let max = inner.info.max_context_length as usize;
        if tokens.len() > max {
            return Err(EngineError::ContextOverflow {
                needed: tokens.len(),
                capacity: max,
            });
        }
        inputs.push(tokens);
    }
    let longest = inputs.iter().map(Vec::len).max().unwrap_or(1) as u32;
    let n = NonZeroU32::new(longest.max(1)).unwrap_or(NonZeroU32::MIN);
    let threads = i32::try_from(inner.threads).unwrap_or(1);
    let params = LlamaContextParams::default()
        .with_n_ctx(Some(n))
        .with_n_batch(n.get())
        .with_n_ubatch(n.get())
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_embeddings(true)
        .with_pooling_type(LlamaPoolingType::Mean);
    clear_last_error();
    let mut ctx = model
        .unguarded()
        .new_context(backend()?, params)
        .map_err(|e| engine_err("creating an embedding context", e))?;
    let mut batch = LlamaBatch::new(n.get() as usize, 1);
    let mut out = Vec::with_capacity(inputs.len());
    for tokens in inputs {
        ctx.clear_kv_cache();
        batch.clear();
        for (pos, &t) in tokens.iter().enumerate() {
            batch
                .add(t, pos as i32, &[0], true)
                .map_err(|e| engine_err("batching", e))?;
        }
        clear_last_error();
        ctx.decode(&mut batch)
            .map_err(|e| engine_err("embedding", e))?;
        let v = ctx
            .embeddings_seq_ith(0)
            .map_err(|e| engine_err("reading the embedding", e))?;
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        out.push(v.iter().map(|x| x * scale).collect());
    }
    Ok(out)
}
