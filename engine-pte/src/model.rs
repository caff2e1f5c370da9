//! A loaded `.pte` program as an engine [`Model`], and its sessions.
//!
//! An exported decoder keeps its KV cache inside the program (a static
//! cache in a mutable buffer), so one loaded program has exactly one cache.
//! Sessions therefore take turns: the model remembers which session's
//! tokens are in the cache, and a session that finds someone else's there
//! runs its own tokens again first. The replay reuses the session's own
//! chunk boundaries, so the cache it rebuilds is the one it had, bit for
//! bit, and interleaved sessions give the same answers as sequential ones.
//! Truncation is free: positions are explicit inputs and the program's
//! causal mask hides cache entries past the current position.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arny_engine_api::{
    Capabilities, ChatTemplate, DEFAULT_CONTEXT, DeviceRequest, EngineError, LoadOptions, Logits,
    LogitsRequest, Model, ModelInfo, ModelSource, Result, Session, SessionOptions, SpecialTokens,
    TokenId, check_eval, check_model_file, cpu_device, default_threads, resolve_context,
};
use arny_gguf::GgufFile;
use arny_tokenizer::{BpeTokenizer, Tokenizer};
use base64::Engine as _;
use serde::Deserialize;

use crate::ENGINE_ID;
use crate::ffi::{self, Constant, DTYPE_FLOAT, DTYPE_LONG, Program, Rows, TAG_TENSOR};
use crate::header;

const FORWARD: &str = "forward";

/// What `arny export pte` stores in the program (`get_arny_config`).
#[derive(Debug, Clone, Deserialize)]
struct ExportConfig {
    name: Option<String>,
    architecture: String,
    parameters: u64,
    trained_context_length: u32,
    quantization: String,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    #[serde(default)]
    end_of_generation_ids: Vec<u32>,
    #[serde(default)]
    add_bos_token: bool,
}

/// How `forward` takes positions and returns logits; read from the method
/// signature, because the two exporters differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signature {
    /// Most tokens one call takes.
    max_chunk: usize,
    /// `cache_position` holds one position per token (optimum-executorch);
    /// otherwise `input_pos` holds the first position only (export_llm).
    position_per_token: bool,
    /// Logits for every position (`[1, seq, vocab]`) or only the last
    /// (`[1, vocab]`).
    all_rows: bool,
}

impl Signature {
    fn read(program: &mut Program, source_name: &str) -> Result<Self> {
        let bad = |reason: String| EngineError::Unsupported(format!("{source_name}: {reason}"));
        let inputs = program.inputs(FORWARD)?;
        let outputs = program.outputs(FORWARD)?;
        let [tokens, positions] = inputs.as_slice() else {
            return Err(bad(format!(
                "`forward` takes {} inputs; a decoder takes tokens and positions",
                inputs.len()
            )));
        };
        for s in [tokens, positions] {
            if s.tag != TAG_TENSOR || s.dtype != DTYPE_LONG {
                return Err(bad(format!("`forward` input {s:?} is not an int64 tensor")));
            }
        }
        let (&[1, max_chunk], &[pos_len]) = (tokens.dims(), positions.dims()) else {
            return Err(bad(format!(
                "`forward` inputs have shapes {:?} and {:?}; expected [1, seq] and [seq] or [1]",
                tokens.dims(),
                positions.dims()
            )));
        };
        let Some(out) = outputs.first().filter(|o| o.tag == TAG_TENSOR) else {
            return Err(bad("`forward` returns no tensor".into()));
        };
        if out.dtype != DTYPE_FLOAT {
            return Err(bad(format!(
                "`forward` returns dtype {}, not f32",
                out.dtype
            )));
        }
        // `[1, 1, vocab]` from a program that takes longer chunks is an
        // export that keeps only the last row (Arny's exporter: the
        // other rows would cost a 49k-wide matmul each and a planned
        // buffer of `seq × vocab` floats).
        let all_rows = match out.dims() {
            [1, rows, _] => *rows > 1 || max_chunk == 1,
            [1, _] => false,
            d => return Err(bad(format!("`forward` returns logits of shape {d:?}"))),
        };
        Ok(Self {
            max_chunk: max_chunk.max(1) as usize,
            position_per_token: pos_len > 1 || max_chunk == 1,
            all_rows,
        })
    }
}

/// The program and whose tokens are in its cache.
struct Runner {
    program: Program,
    /// Session id whose tokens the cache holds; 0: nobody's.
    owner: u64,
}

/// ExecuTorch's thread pool is one per process, and XNNPACK keeps a
/// pointer to it in every program it initialises: resizing it (which
/// replaces it) while a program is loaded left that program waiting on a
/// freed pool, measured as a hang. So the pool is sized only while no
/// program is loaded, by the next load; a load that asks for another size
/// while programs are loaded gets the current one (its `ModelInfo::device`
/// says which). Runs of all programs are serialised on the pool.
struct Pool {
    live_programs: usize,
    threads: u32,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    live_programs: 0,
    threads: 0,
});

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the runner inconsistent
    // in a way a later run trusts: ownership is reset before any run.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Inner {
    runner: Mutex<Runner>,
    sig: Signature,
    vocab: usize,
    info: ModelInfo,
    special: SpecialTokens,
    template: Option<ChatTemplate>,
    tokenizer: Tokenizer,
    seed: u64,
    next_session: AtomicU64,
}

pub struct PteModel {
    inner: Arc<Inner>,
}

/// Reads a string metadata method, `None` when the program lacks it.
fn string_constant(p: &mut Program, names: &[String], method: &str) -> Result<Option<String>> {
    if !names.iter().any(|n| n == method) {
        return Ok(None);
    }
    match p.constant(method)? {
        Constant::Str(s) => Ok(Some(s)),
        other => Err(EngineError::Unsupported(format!(
            "`{method}` returned {other:?}, not a string"
        ))),
    }
}

fn int_constant(p: &mut Program, names: &[String], method: &str) -> Result<Option<i64>> {
    if !names.iter().any(|n| n == method) {
        return Ok(None);
    }
    match p.constant(method)? {
        Constant::Int(i) => Ok(Some(i)),
        Constant::Bool(b) => Ok(Some(i64::from(b))),
        _ => Ok(None),
    }
}

fn read_sibling(path: Option<&Path>, file: &str) -> Option<String> {
    let dir = path?.parent()?;
    std::fs::read_to_string(dir.join(file)).ok()
}

/// What a program says about the model inside it, from its metadata
/// methods (and, for programs Arny did not export, the files beside it).
struct ProgramFacts {
    config: Option<ExportConfig>,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    special: SpecialTokens,
    max_seq_len: u32,
}

impl ProgramFacts {
    fn read(program: &mut Program, path: Option<&Path>, name: &str) -> Result<Self> {
        let names = program.method_names()?;
        let config = match string_constant(program, &names, "get_arny_config")? {
            Some(json) => Some(serde_json::from_str::<ExportConfig>(&json).map_err(|e| {
                EngineError::Corrupt {
                    source_name: name.to_string(),
                    reason: format!("get_arny_config: {e}"),
                }
            })?),
            None => None,
        };
        let max_seq_len = int_constant(program, &names, "get_max_seq_len")?
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| EngineError::Unsupported(format!("{name}: no get_max_seq_len")))?;
        let vocab_constant = int_constant(program, &names, "get_vocab_size")?;
        let check_vocab = |vocab: usize| match vocab_constant {
            Some(v) if v as usize != vocab => Err(EngineError::Corrupt {
                source_name: name.to_string(),
                reason: format!("program vocabulary {v}, tokenizer {vocab}"),
            }),
            _ => Ok(()),
        };
        // Programs Arny exports carry the source's `tokenizer.*` keys as a
        // GGUF: the tokenizer, special tokens and chat template are then
        // built exactly as the other engines build them from the source.
        if let Some(encoded) = string_constant(program, &names, "get_arny_tokenizer_gguf")? {
            let corrupt = |reason: String| EngineError::Corrupt {
                source_name: name.to_string(),
                reason: format!("get_arny_tokenizer_gguf: {reason}"),
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|e| corrupt(e.to_string()))?;
            let file = GgufFile::from_bytes(&bytes).map_err(|e| corrupt(e.to_string()))?;
            let tokenizer = Tokenizer::from_gguf(&file).map_err(|e| e.into_engine_error(name))?;
            let vocab = tokenizer.vocab_size();
            check_vocab(vocab)?;
            let special = tokenizer.special_tokens(&file, vocab);
            let (bos, eos) = special.bos_eos_text(|t| tokenizer.token_bytes(t));
            let template =
                ChatTemplate::from_model(file.get_str("tokenizer.chat_template"), &bos, &eos)?;
            return Ok(Self {
                config,
                tokenizer,
                template,
                special,
                max_seq_len,
            });
        }
        // Programs from earlier Arny exports carry a tokenizer.json; other
        // programs (ExecuTorch's export_llm, optimum-cli) need the one
        // their exporter wrote beside them.
        let tokenizer_json = match string_constant(program, &names, "get_arny_tokenizer_json")? {
            Some(t) => t,
            None => read_sibling(path, "tokenizer.json").ok_or_else(|| {
                EngineError::Unsupported(format!(
                    "{name}: the program carries no tokenizer and no tokenizer.json is beside it \
                     (export with `arny export pte`)"
                ))
            })?,
        };
        let tokenizer = Tokenizer::from(
            BpeTokenizer::from_tokenizer_json(tokenizer_json.as_bytes())
                .map_err(|e| e.into_engine_error(name))?,
        );
        check_vocab(tokenizer.vocab_size())?;
        let special = Self::special_tokens(program, &names, config.as_ref())?;
        let template_src = match string_constant(program, &names, "get_arny_chat_template")? {
            Some(t) => Some(t),
            None => read_sibling(path, "chat_template.jinja").or_else(|| {
                read_sibling(path, "tokenizer_config.json")
                    .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok())
                    .and_then(|c| c.get("chat_template")?.as_str().map(String::from))
            }),
        };
        let (bos, eos) = special.bos_eos_text(|t| tokenizer.token_bytes(t));
        let template = ChatTemplate::from_model(template_src.as_deref(), &bos, &eos)?;
        Ok(Self {
            config,
            tokenizer,
            template,
            special,
            max_seq_len,
        })
    }

    fn special_tokens(
        program: &mut Program,
        names: &[String],
        config: Option<&ExportConfig>,
    ) -> Result<SpecialTokens> {
        let meta_id = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
        let (bos, eos) = match config {
            Some(c) => (c.bos_token_id, c.eos_token_id),
            None => (
                meta_id(int_constant(program, names, "get_bos_id")?),
                meta_id(int_constant(program, names, "get_eos_id")?),
            ),
        };
        let mut end_of_generation: Vec<TokenId> = config
            .map(|c| c.end_of_generation_ids.clone())
            .unwrap_or_default();
        end_of_generation.extend(eos);
        end_of_generation.sort_unstable();
        end_of_generation.dedup();
        Ok(SpecialTokens {
            bos,
            eos,
            end_of_generation,
            add_bos: config.is_some_and(|c| c.add_bos_token),
        })
    }
}

/// Sizes ExecuTorch's pool for a load (see [`Pool`]) and returns the size
/// it has. The caller holds the lock until the program is loaded, so no
/// other load can resize the pool in between.
fn size_pool(pool: &mut Pool, wanted: u32) -> Result<u32> {
    if pool.live_programs == 0 && pool.threads != wanted {
        ffi::set_threads(wanted)?;
        pool.threads = wanted;
    }
    if pool.threads == 0 {
        pool.threads = ffi::threads()?;
    }
    if pool.threads != wanted {
        tracing::warn!(
            wanted,
            threads = pool.threads,
            "ExecuTorch's thread pool is shared by every loaded program and cannot be resized while one is loaded"
        );
    }
    Ok(pool.threads)
}

/// Checks the header before the runtime sees any bytes, then opens the
/// program: `(program, file size, path)`.
/// The part of `arny-export.json` that vouches for the program's bytes.
#[derive(Deserialize)]
struct ExportRecord {
    program: String,
    program_sha256: String,
    program_bytes: u64,
}

/// Checks a program against the export record beside it, when there is
/// one that names it. ExecuTorch verifies a program's flatbuffer but not
/// what the instructions index nor the XNNPACK blob's tensor data: the
/// mutation campaign found single damaged bytes there that crash the
/// process in `execute` (SIGSEGV in XNNPACK, an abort in a kernel's
/// argument check). A damaged copy of an Arny export fails here instead,
/// for the cost of hashing the file once per load.
fn check_export_record(path: &Path, len: u64, name: &str) -> Result<()> {
    let Some(text) = read_sibling(Some(path), "arny-export.json") else {
        return Ok(());
    };
    let corrupt = |reason: String| EngineError::Corrupt {
        source_name: name.to_string(),
        reason,
    };
    let record: ExportRecord = serde_json::from_str(&text).map_err(|e| {
        corrupt(format!(
            "its export record (arny-export.json) is unreadable: {e}"
        ))
    })?;
    if path.file_name().and_then(|n| n.to_str()) != Some(record.program.as_str()) {
        return Ok(());
    }
    if record.program_bytes != len {
        return Err(corrupt(format!(
            "{len} bytes where its export record (arny-export.json) says {}",
            record.program_bytes
        )));
    }
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut file =
        std::fs::File::open(path).map_err(|e| EngineError::io(format!("reading {name}"), e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| EngineError::io(format!("reading {name}"), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if !digest.eq_ignore_ascii_case(&record.program_sha256) {
        return Err(corrupt(format!(
            "its SHA-256 is {digest}, its export record (arny-export.json) says {}: the file is damaged",
            record.program_sha256
        )));
    }
    Ok(())
}

fn open(source: ModelSource, use_mmap: bool) -> Result<(Program, u64, Option<PathBuf>)> {
    match source {
        ModelSource::Path(path) => {
            let len = check_model_file(&path)?;
            let name = path.display().to_string();
            let mut head = Vec::with_capacity(64);
            std::fs::File::open(&path)
                .and_then(|f| f.take(64).read_to_end(&mut head))
                .map_err(|e| EngineError::io(format!("reading {name}"), e))?;
            header::check(&head, len, &name)?;
            check_export_record(&path, len, &name)?;
            let program = if use_mmap {
                Program::open_file(&path, FORWARD)?
            } else {
                let bytes: Arc<[u8]> = std::fs::read(&path)
                    .map_err(|e| EngineError::io(format!("reading {name}"), e))?
                    .into();
                Program::open_bytes(&name, bytes, FORWARD)?
            };
            Ok((program, len, Some(path)))
        }
        ModelSource::Bytes { name, bytes } => {
            let head = &bytes[..bytes.len().min(64)];
            header::check(head, bytes.len() as u64, &name)?;
            let len = bytes.len() as u64;
            Ok((Program::open_bytes(&name, bytes, FORWARD)?, len, None))
        }
    }
}

impl PteModel {
    pub fn load(source: ModelSource, options: &LoadOptions) -> Result<Self> {
        let progress = |f: f32| {
            if let Some(p) = &options.progress {
                p(f)
            }
        };
        if options.device == DeviceRequest::Gpu {
            return Err(EngineError::Unsupported(
                "the pte engine runs XNNPACK on the CPU; the executorch wheel's runtime has no GPU delegate"
                    .into(),
            ));
        }
        progress(0.0);
        let wanted = options.threads.unwrap_or_else(default_threads).max(1);
        let mut pool = lock(&POOL);
        let threads = size_pool(&mut pool, wanted)?;
        let name = source.display_name();
        let (mut program, file_bytes, path) = open(source, options.use_mmap)?;
        progress(0.7);
        let sig = Signature::read(&mut program, &name)?;
        let facts = ProgramFacts::read(&mut program, path.as_deref(), &name)?;
        let planned_bytes = program.planned_bytes(FORWARD)?;
        let context_length =
            resolve_context(options.context_length, DEFAULT_CONTEXT, facts.max_seq_len)?;
        let config = facts.config.as_ref();
        let info = ModelInfo {
            architecture: config.map_or_else(|| "unknown".into(), |c| c.architecture.clone()),
            name: config.and_then(|c| c.name.clone()),
            parameters: config.map_or(0, |c| c.parameters),
            quantization: config.map_or_else(|| "unknown".into(), |c| c.quantization.clone()),
            vocab_size: facts.tokenizer.vocab_size() as u32,
            trained_context_length: config.map_or(facts.max_seq_len, |c| c.trained_context_length),
            max_context_length: facts.max_seq_len,
            context_length,
            // The mapped program plus the method's planned buffers (the KV
            // cache and activations) and the tokenizer. XNNPACK's packed
            // copies of the delegated weights take the place of their
            // pages in the program, which the loader frees once packed.
            resident_bytes: file_bytes + planned_bytes + facts.tokenizer.heap_bytes(),
            file_bytes,
            engine: ENGINE_ID.into(),
            device: cpu_device(Some("XNNPACK"), threads),
            capabilities: Capabilities {
                logits: true,
                grammar: true,
                ..Capabilities::default()
            },
        };
        tracing::info!(
            model = %name,
            max_seq_len = facts.max_seq_len,
            chunk = sig.max_chunk,
            all_rows = sig.all_rows,
            planned_bytes,
            "pte program loaded"
        );
        // What the load freed (the tokenizer's build, XNNPACK's packing
        // scratch) goes back to the system, so RSS is what the model holds.
        arny_engine_api::release_free_heap();
        pool.live_programs += 1;
        drop(pool);
        progress(1.0);
        Ok(Self {
            inner: Arc::new(Inner {
                runner: Mutex::new(Runner { program, owner: 0 }),
                sig,
                vocab: facts.tokenizer.vocab_size(),
                info,
                special: facts.special,
                template: facts.template,
                tokenizer: facts.tokenizer,
                seed: options.seed,
                next_session: AtomicU64::new(1),
            }),
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        lock(&POOL).live_programs -= 1;
    }
}

impl Inner {
    /// One call of `forward` on `tokens` at `start`, appending the logits
    /// `rows` selects to `logits`.
    fn forward(
        &self,
        program: &mut Program,
        tokens: &[TokenId],
        start: usize,
        rows: Rows,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let _pool = lock(&POOL);
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let n = tokens.len();
        let positions: Vec<i64> = if self.sig.position_per_token {
            (start..start + n).map(|p| p as i64).collect()
        } else {
            vec![start as i64]
        };
        let ids_shape = [1, n as i32];
        let pos_shape = [positions.len() as i32];
        let expected = match rows {
            Rows::None => 0,
            Rows::Last => 1,
            Rows::All if self.sig.all_rows => n,
            Rows::All => 1,
        };
        let before = logits.len();
        let output = program.run(
            FORWARD,
            &[(&ids, &ids_shape), (&positions, &pos_shape)],
            rows,
            expected * self.vocab,
            logits,
        )?;
        if output.dims.last() != Some(&self.vocab) || logits.len() - before != expected * self.vocab
        {
            logits.truncate(before);
            return Err(EngineError::engine(
                ENGINE_ID,
                format!(
                    "`forward` on {n} tokens returned logits of shape {:?}",
                    output.dims
                ),
            ));
        }
        Ok(())
    }

    /// Runs `tokens` from `start` in chunks (`segments` lengths when
    /// given), appending the logits `request` asks for.
    fn run(
        &self,
        program: &mut Program,
        tokens: &[TokenId],
        start: usize,
        segments: &[usize],
        request: LogitsRequest,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let mut at = 0;
        let mut segments = segments.iter().copied();
        while at < tokens.len() {
            let want = segments.next().unwrap_or(self.sig.max_chunk);
            let n = want.min(self.sig.max_chunk).min(tokens.len() - at).max(1);
            let last_chunk = at + n == tokens.len();
            let chunk = &tokens[at..at + n];
            match request {
                LogitsRequest::All if !self.sig.all_rows => {
                    // The program returns the last row only: one token a call.
                    for (i, &t) in chunk.iter().enumerate() {
                        self.forward(program, &[t], start + at + i, Rows::Last, logits)?;
                    }
                }
                LogitsRequest::All => {
                    self.forward(program, chunk, start + at, Rows::All, logits)?
                }
                LogitsRequest::Last if last_chunk => {
                    self.forward(program, chunk, start + at, Rows::Last, logits)?
                }
                _ => self.forward(program, chunk, start + at, Rows::None, logits)?,
            }
            at += n;
        }
        Ok(())
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
impl Model for PteModel {
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
        let mut ids = Vec::new();
        if add_special
            && self.inner.special.add_bos
            && let Some(bos) = self.inner.special.bos
        {
            ids.push(bos);
        }
        ids.extend(
            self.inner
                .tokenizer
                .encode(text, parse_special)
                .map_err(|e| e.into_engine_error(ENGINE_ID))?,
        );
        Ok(ids)
    }

    fn token_bytes(&self, token: TokenId) -> Result<&[u8]> {
        self.inner.tokenizer.token_bytes(token).ok_or_else(|| {
            EngineError::InvalidInput(format!(
                "token {token} is outside the vocabulary of {}",
                self.inner.vocab
            ))
        })
    }

    /// A program carries its weights and XNNPACK packs them at load, so
    /// there is nothing to add a delta to at run time: an adapter is merged
    /// at export instead, one program per specialist.
    async fn load_adapter(
        &self,
        source: arny_engine_api::ModelSource,
        _scale: f32,
    ) -> Result<std::sync::Arc<dyn arny_engine_api::Adapter>> {
        Err(EngineError::Unsupported(format!(
            "LoRA adapters on the pte engine (asked for {}): merge it into a program with \
             `arny export pte --adapter FILE` and run that program",
            source.display_name()
        )))
    }

    async fn new_session(&self, options: SessionOptions) -> Result<Box<dyn Session>> {
        options.refuse_adapter(crate::ENGINE_ID)?;
        let info = &self.inner.info;
        let context_length = resolve_context(
            options.context_length,
            info.context_length,
            info.max_context_length,
        )? as usize;
        Ok(Box::new(PteSession {
            inner: self.inner.clone(),
            id: self.inner.next_session.fetch_add(1, Ordering::Relaxed),
            context_length,
            tokens: Vec::new(),
            segments: Vec::new(),
        }))
    }
}

pub struct PteSession {
    inner: Arc<Inner>,
    id: u64,
    context_length: usize,
    tokens: Vec<TokenId>,
    /// Lengths of the chunks the cached tokens were run in, for replay.
    segments: Vec<usize>,
}

impl PteSession {
    fn eval_sync(&mut self, tokens: &[TokenId], request: LogitsRequest) -> Result<Logits> {
        let vocab = self.inner.vocab;
        let mut logits = Vec::new();
        if !check_eval(tokens, self.tokens.len(), self.context_length, vocab)? {
            return Ok(Logits {
                vocab,
                data: logits,
            });
        }
        let inner = &*self.inner;
        let mut runner = lock(&inner.runner);
        if runner.owner != self.id {
            // Someone else's tokens are in the cache: rebuild ours first,
            // chunked as they were first run.
            runner.owner = 0;
            inner.run(
                &mut runner.program,
                &self.tokens,
                0,
                &self.segments,
                LogitsRequest::None,
                &mut Vec::new(),
            )?;
            runner.owner = self.id;
        }
        // On failure, entries past our tokens may be half-written; they are
        // masked and overwritten by the next run, so the cache stays ours.
        inner.run(
            &mut runner.program,
            tokens,
            self.tokens.len(),
            &[],
            request,
            &mut logits,
        )?;
        let max = inner.sig.max_chunk;
        let mut left = tokens.len();
        while left > 0 {
            let n = left.min(max);
            self.segments.push(n);
            left -= n;
        }
        self.tokens.extend_from_slice(tokens);
        Ok(Logits {
            vocab,
            data: logits,
        })
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
impl Session for PteSession {
    fn context_length(&self) -> usize {
        self.context_length
    }

    fn tokens(&self) -> &[TokenId] {
        &self.tokens
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.tokens.len() {
            return Ok(());
        }
        self.tokens.truncate(len);
        // Keep the segment list in step: whole segments up to `len`, then
        // what is left of the one it cuts.
        let mut kept = 0;
        let mut segments = Vec::new();
        for &s in &self.segments {
            if kept + s <= len {
                segments.push(s);
                kept += s;
            } else {
                if len > kept {
                    segments.push(len - kept);
                }
                break;
            }
        }
        self.segments = segments;
        Ok(())
    }

    fn preferred_batch(&self) -> usize {
        self.inner.sig.max_chunk
    }

    fn resident_bytes(&self) -> u64 {
        // The cache lives in the program's planned memory, which the
        // model's sessions share (and the model's resident bytes count); a
        // session holds only its token history.
        (std::mem::size_of::<Self>()
            + self.tokens.capacity() * std::mem::size_of::<TokenId>()
            + self.segments.capacity() * std::mem::size_of::<usize>()) as u64
    }

    async fn eval(&mut self, tokens: &[TokenId], logits: LogitsRequest) -> Result<Logits> {
        self.eval_sync(tokens, logits)
    }
}
