//! A llama.cpp context holding one conversation's KV cache.

use std::num::NonZeroU32;
use std::sync::Arc;

use arny_engine_api::{
    Adapter, EngineError, Logits, LogitsRequest, Result, Session, TokenId, check_eval,
    downcast_adapter,
};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use self_cell::self_cell;

use crate::ENGINE_ID;
use crate::adapter::GgufAdapter;
use crate::backend::{backend, buffer_bytes, clear_last_error, last_llama_error};
use crate::loaded::Inner;

/// Largest batch handed to one `llama_decode`.
const MAX_BATCH: u32 = 512;
/// Largest batch llama.cpp computes at once. Its compute buffer holds a
/// logits row per token of it (49,152 floats for SmolLM2: 100 MB at 512
/// tokens, 25 MB at 128), and prefill on a phone-sized CPU gains little
/// past 128.
const MAX_UBATCH: u32 = 128;

type Ctx<'a> = LlamaContext<'a>;

self_cell!(
    /// A context together with the model it borrows, so a session can
    /// outlive the caller's reference to the model.
    struct ContextCell {
        owner: Arc<Inner>,
        #[covariant]
        dependent: Ctx,
    }
);

/// One conversation on a [`crate::GgufModel`].
pub struct GgufSession {
    cell: ContextCell,
    batch: LlamaBatch<'static>,
    n_batch: usize,
    n_ctx: usize,
    tokens: Vec<TokenId>,
    /// KV cache, compute and output buffers at creation.
    context_bytes: u64,
    /// The most logits rows one decode asked for: llama.cpp grows the
    /// output buffer to fit them and keeps it.
    output_rows: usize,
    /// Kept so the adapter's handle outlives every use of it here.
    _adapter: Option<Arc<dyn Adapter>>,
    /// Last: trims the heap after the context is freed.
    _trim: crate::backend::TrimOnDrop,
}

impl GgufSession {
    pub(crate) fn new(
        inner: Arc<Inner>,
        n_ctx: NonZeroU32,
        adapter: Option<Arc<dyn Adapter>>,
    ) -> Result<Self> {
        let n_batch = MAX_BATCH.min(n_ctx.get());
        let threads = i32::try_from(inner.threads).unwrap_or(1);
        let params = LlamaContextParams::default()
            .with_n_ctx(Some(n_ctx))
            .with_n_batch(n_batch)
            .with_n_ubatch(MAX_UBATCH.min(n_batch))
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let backend = backend()?;
        clear_last_error();
        let (cell, buffers) = buffer_bytes(|| {
            ContextCell::try_new(inner, |inner| {
                let model = inner.model.read();
                model.unguarded().new_context(backend, params).map_err(|e| {
                    EngineError::engine(
                        ENGINE_ID,
                        format!(
                            "creating a {n_ctx}-token context: {}",
                            last_llama_error().unwrap_or_else(|| e.to_string())
                        ),
                    )
                })
            })
        });
        let mut cell = cell?;
        if let Some(a) = &adapter {
            let ours: &GgufAdapter = downcast_adapter(a, ENGINE_ID)?;
            let scale = a.info().scale;
            let mut handle = ours.handle.lock().unwrap_or_else(|e| e.into_inner());
            clear_last_error();
            cell.with_dependent_mut(|inner, ctx| {
                let _model = inner.model.read();
                ctx.lora_adapter_set(&mut handle, scale)
            })
            .map_err(|e| {
                EngineError::engine(
                    ENGINE_ID,
                    format!(
                        "attaching the adapter {}: {}",
                        a.info().name,
                        last_llama_error().unwrap_or_else(|| e.to_string())
                    ),
                )
            })?;
        }
        // What llama.cpp reported; the KV cache alone (K and V, f16, every
        // layer and position) should its log lines ever change.
        let context_bytes = if buffers > 0 {
            buffers
        } else {
            let m = cell.borrow_owner().model.read();
            let head_dim = u64::try_from(m.n_embd()).unwrap_or(0) / u64::from(m.n_head().max(1));
            2 * 2
                * u64::from(n_ctx.get())
                * u64::from(m.n_layer())
                * u64::from(m.n_head_kv())
                * head_dim
        };
        Ok(Self {
            cell,
            batch: LlamaBatch::new(n_batch as usize, 1),
            n_batch: n_batch as usize,
            n_ctx: n_ctx.get() as usize,
            tokens: Vec::new(),
            context_bytes,
            output_rows: 1,
            _adapter: adapter,
            _trim: Default::default(),
        })
    }

    /// Runs one chunk of at most `n_batch` tokens starting at `pos`.
    fn decode_chunk(
        &mut self,
        chunk: &[TokenId],
        pos: usize,
        want_all: bool,
        want_last: bool,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        self.batch.clear();
        for (j, &t) in chunk.iter().enumerate() {
            let logits = want_all || (want_last && j + 1 == chunk.len());
            self.batch
                .add(LlamaToken(t as i32), (pos + j) as i32, &[0], logits)
                .map_err(|e| EngineError::engine(ENGINE_ID, e.to_string()))?;
        }
        let batch = &mut self.batch;
        self.cell.with_dependent_mut(|inner, ctx| {
            // A decode may re-reserve the graph, which reads the model's
            // adapter list (see `SharedModel`).
            let _model = inner.model.read();
            clear_last_error();
            ctx.decode(batch).map_err(|e| {
                EngineError::engine(
                    ENGINE_ID,
                    last_llama_error().unwrap_or_else(|| e.to_string()),
                )
            })?;
            if want_all {
                for j in 0..chunk.len() {
                    out.extend_from_slice(ctx.get_logits_ith(j as i32));
                }
            } else if want_last {
                out.extend_from_slice(ctx.get_logits_ith(chunk.len() as i32 - 1));
            }
            Ok(())
        })
    }
}

#[async_trait::async_trait]
impl Session for GgufSession {
    fn context_length(&self) -> usize {
        self.n_ctx
    }

    fn tokens(&self) -> &[TokenId] {
        &self.tokens
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.tokens.len() {
            return Ok(());
        }
        let p0 = u32::try_from(len).map_err(|_| EngineError::InvalidInput("position".into()))?;
        let ok = self
            .cell
            .with_dependent_mut(|_, ctx| ctx.clear_kv_cache_seq(Some(0), Some(p0), None));
        match ok {
            Ok(true) => {
                self.tokens.truncate(len);
                Ok(())
            }
            _ => {
                // Partial removal failed (some cache types cannot do it):
                // start over rather than keep a cache that disagrees with
                // `tokens`.
                self.cell.with_dependent_mut(|_, ctx| ctx.clear_kv_cache());
                self.tokens.clear();
                Ok(())
            }
        }
    }

    /// One micro-batch: llama.cpp computes a larger batch in pieces of
    /// this size anyway, and the generation loop checks for a cancel
    /// between chunks, so a cancel lands within 128 prompt tokens instead
    /// of 512 (at 1 thread on 2 cores: 1.2 s instead of 4.8 s).
    fn preferred_batch(&self) -> usize {
        self.n_batch.min(MAX_UBATCH as usize)
    }

    fn resident_bytes(&self) -> u64 {
        let vocab = self.cell.borrow_owner().n_vocab() as u64;
        self.context_bytes + (self.output_rows as u64 - 1) * vocab * 4
    }

    async fn eval(&mut self, tokens: &[TokenId], want: LogitsRequest) -> Result<Logits> {
        let vocab = self.cell.borrow_owner().n_vocab();
        let mut data = Vec::new();
        if !check_eval(tokens, self.tokens.len(), self.n_ctx, vocab)? {
            return Ok(Logits { vocab, data });
        }
        if want == LogitsRequest::All {
            data.reserve(tokens.len() * vocab);
        }
        if want == LogitsRequest::All {
            self.output_rows = self.output_rows.max(tokens.len().min(self.n_batch));
        }
        let start = self.tokens.len();
        let n_chunks = tokens.len().div_ceil(self.n_batch);
        for (i, chunk) in tokens.chunks(self.n_batch).enumerate() {
            let pos = self.tokens.len();
            let last = i + 1 == n_chunks;
            let r = self.decode_chunk(
                chunk,
                pos,
                want == LogitsRequest::All,
                last && want == LogitsRequest::Last,
                &mut data,
            );
            if let Err(e) = r {
                // Leave the cache exactly as it was before this call.
                self.truncate(start)?;
                return Err(e);
            }
            self.tokens.extend_from_slice(chunk);
        }
        Ok(Logits { vocab, data })
    }
}
