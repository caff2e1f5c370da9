//! A scripted in-memory engine for unit tests of the generation loop and
//! of what sits above the engine traits (the SDK's model manager: budgets,
//! single-flight loads, eviction). Real-model behaviour is tested in
//! `conformance-tests` on every engine; this is never the only proof.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::Shared;

use crate::*;

/// Pieces the mock "model" emits in order after any prompt. Two characters
/// are split across tokens on purpose.
const SCRIPT: [&[u8]; 11] = [
    b"Hel",
    b"lo",
    b",",
    b" w",
    b"\xc3",
    b"\xb6",
    b"rld",
    b" \xf0\x9f",
    b"\x8e\x89",
    b" STOP",
    b" end",
];
pub const EOS: TokenId = 0;
const FIRST: TokenId = 2;
const BYTE0: TokenId = FIRST + SCRIPT.len() as TokenId;
pub const VOCAB: usize = BYTE0 as usize + 256;
pub const FULL_TEXT: &str = "Hello, wörld 🎉 STOP end";

pub struct MockModel {
    info: ModelInfo,
    special: SpecialTokens,
    template: ChatTemplate,
    pieces: Vec<Vec<u8>>,
    session_bytes: u64,
}

impl MockModel {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::build(MockSpec::default()))
    }

    fn build(spec: MockSpec) -> Self {
        let mut pieces = vec![Vec::new(), Vec::new()];
        pieces.extend(SCRIPT.iter().map(|p| p.to_vec()));
        pieces.extend((0..=255u8).map(|b| vec![b]));
        Self {
            info: ModelInfo {
                architecture: "mock".into(),
                name: None,
                parameters: 0,
                quantization: "none".into(),
                vocab_size: VOCAB as u32,
                trained_context_length: 4096,
                max_context_length: 4096,
                context_length: 4096,
                resident_bytes: spec.weight_bytes,
                file_bytes: spec.weight_bytes,
                engine: "mock".into(),
                device: "cpu".into(),
                capabilities: Capabilities::default(),
            },
            special: SpecialTokens {
                bos: Some(1),
                eos: Some(EOS),
                end_of_generation: vec![EOS],
                add_bos: true,
            },
            template: ChatTemplate::new(
                BuiltinTemplate::ChatMl.source(),
                TemplateOrigin::Builtin(BuiltinTemplate::ChatMl),
                "<s>",
                "</s>",
            )
            .expect("the built-in template parses"),
            pieces,
            session_bytes: spec.session_bytes,
        }
    }

    /// The token the script favours after `last`.
    fn next(last: TokenId) -> TokenId {
        if (FIRST..BYTE0 - 1).contains(&last) {
            last + 1
        } else if last == BYTE0 - 1 {
            EOS
        } else {
            FIRST
        }
    }
}

#[async_trait::async_trait]
impl Model for MockModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }
    fn chat_template(&self) -> Option<&ChatTemplate> {
        Some(&self.template)
    }
    fn tokenize(&self, text: &str, _: bool, _: bool) -> Result<Vec<TokenId>> {
        Ok(text.bytes().map(|b| BYTE0 + TokenId::from(b)).collect())
    }
    fn token_bytes(&self, token: TokenId) -> Result<&[u8]> {
        self.pieces
            .get(token as usize)
            .map(Vec::as_slice)
            .ok_or_else(|| EngineError::InvalidInput(format!("token {token} out of range")))
    }
    async fn new_session(&self, options: SessionOptions) -> Result<Box<dyn Session>> {
        options.refuse_adapter("mock")?;
        let ctx = resolve_context(
            options.context_length,
            self.info.context_length,
            self.info.max_context_length,
        )?;
        Ok(Box::new(MockSession {
            ctx: ctx as usize,
            tokens: Vec::new(),
            evaluated: 0,
            bytes: self.session_bytes,
        }))
    }
}

pub struct MockSession {
    ctx: usize,
    tokens: Vec<TokenId>,
    /// Every token ever run through `eval`, to check cache reuse.
    pub evaluated: usize,
    bytes: u64,
}

#[async_trait::async_trait]
impl Session for MockSession {
    fn context_length(&self) -> usize {
        self.ctx
    }
    fn tokens(&self) -> &[TokenId] {
        &self.tokens
    }
    fn truncate(&mut self, len: usize) -> Result<()> {
        self.tokens.truncate(len);
        Ok(())
    }
    fn preferred_batch(&self) -> usize {
        4
    }
    fn resident_bytes(&self) -> u64 {
        self.bytes
    }
    async fn eval(&mut self, tokens: &[TokenId], want: LogitsRequest) -> Result<Logits> {
        if !check_eval(tokens, self.tokens.len(), self.ctx, VOCAB)? {
            return Ok(Logits {
                vocab: VOCAB,
                data: Vec::new(),
            });
        }
        self.tokens.extend_from_slice(tokens);
        self.evaluated += tokens.len();
        let row = |t: TokenId| {
            let mut r = vec![0.0f32; VOCAB];
            r[MockModel::next(t) as usize] = 10.0;
            r
        };
        let data = match want {
            LogitsRequest::None => Vec::new(),
            LogitsRequest::Last => row(*tokens.last().unwrap()),
            LogitsRequest::All => tokens.iter().flat_map(|&t| row(t)).collect(),
        };
        Ok(Logits { vocab: VOCAB, data })
    }
}

/// What a [`MockEngine`] load produces.
#[derive(Debug, Clone, Copy, Default)]
pub struct MockSpec {
    /// The model's `resident_bytes`.
    pub weight_bytes: u64,
    /// Each session's `resident_bytes`.
    pub session_bytes: u64,
    /// The load fails with [`EngineError::Corrupt`].
    pub fail: bool,
}

/// An engine whose loads make [`MockModel`]s. A model is named by its file
/// name (or the name given with bytes) and gets the [`MockSpec`] registered
/// for that name (the default one otherwise); loads are counted, and can be
/// held back with [`MockEngine::hold`] to test what happens meanwhile.
#[derive(Clone, Default)]
pub struct MockEngine {
    state: Arc<MockState>,
}

#[derive(Default)]
struct MockState {
    specs: Mutex<HashMap<String, MockSpec>>,
    loads: AtomicUsize,
    gate: Mutex<Option<Shared<oneshot::Receiver<()>>>>,
}

/// Loads wait while this is alive; dropping it lets them finish.
pub struct MockGate(#[allow(dead_code)] oneshot::Sender<()>);

impl MockEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads of `name` make models with `spec`.
    pub fn with_model(self, name: &str, spec: MockSpec) -> Self {
        lock(&self.state.specs).insert(name.to_string(), spec);
        self
    }

    /// How many loads have started.
    pub fn loads(&self) -> usize {
        self.state.loads.load(Ordering::SeqCst)
    }

    /// Holds every load that starts from now on until the gate drops.
    pub fn hold(&self) -> MockGate {
        let (tx, rx) = oneshot::channel();
        *lock(&self.state.gate) = Some(rx.shared());
        MockGate(tx)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
impl InferenceEngine for MockEngine {
    fn id(&self) -> &'static str {
        "mock"
    }

    async fn load(&self, source: ModelSource, _: LoadOptions) -> Result<Arc<dyn Model>> {
        let name = match &source {
            ModelSource::Path(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ModelSource::Bytes { name, .. } => name.clone(),
        };
        self.state.loads.fetch_add(1, Ordering::SeqCst);
        let gate = lock(&self.state.gate).clone();
        if let Some(gate) = gate {
            // Released or dropped: either way the load goes on.
            let _ = gate.await;
        }
        let spec = lock(&self.state.specs)
            .get(&name)
            .copied()
            .unwrap_or_default();
        if spec.fail {
            return Err(EngineError::Corrupt {
                source_name: name,
                reason: "the mock was told to fail".into(),
            });
        }
        Ok(Arc::new(MockModel::build(spec)))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use futures::executor::block_on;

    use super::*;

    fn run(req: GenerateRequest) -> (Vec<TokenEvent>, Completion) {
        block_on(async {
            let model = MockModel::new();
            let mut s = model.new_session(SessionOptions::default()).await.unwrap();
            let mut events = Vec::new();
            let c = generate(model.as_ref(), s.as_mut(), req, |e| events.push(e.clone()))
                .await
                .unwrap();
            (events, c)
        })
    }

    fn joined(events: &[TokenEvent], c: &Completion) -> String {
        events.iter().map(|e| e.text.as_str()).collect::<String>() + &c.tail
    }

    #[test]
    fn pieces_never_split_characters_and_join_to_the_text() {
        let (events, c) = run(GenerateRequest::chat("hi"));
        assert_eq!(c.text, FULL_TEXT);
        assert_eq!(joined(&events, &c), FULL_TEXT);
        assert_eq!(c.finish_reason, FinishReason::Eos);
        assert_eq!(c.tokens.len(), SCRIPT.len());
        assert!(!c.tokens.contains(&EOS));
        // The first byte of "ö" alone yields no text; the second completes it.
        assert_eq!(events[4].text, "");
        assert_eq!(events[5].text, "ö");
        assert_eq!(events[8].text, "🎉");
        assert_eq!(c.usage.generated_tokens, SCRIPT.len());
    }

    #[test]
    fn stop_string_ends_generation_before_it() {
        let mut req = GenerateRequest::chat("hi");
        req.stop = vec![" STOP".into()];
        let (events, c) = run(req);
        assert_eq!(c.text, "Hello, wörld 🎉");
        assert_eq!(joined(&events, &c), c.text);
        assert_eq!(c.finish_reason, FinishReason::StopString);
        assert_eq!(c.stop.as_deref(), Some(" STOP"));
    }

    #[test]
    fn stop_string_spanning_tokens_is_found() {
        let mut req = GenerateRequest::chat("hi");
        req.stop = vec!["lo, w".into()];
        let (events, c) = run(req);
        assert_eq!(c.text, "Hel");
        assert_eq!(events.len(), 4);
        assert_eq!(c.finish_reason, FinishReason::StopString);
    }

    #[test]
    fn partial_stop_is_released_at_the_end() {
        let mut req = GenerateRequest::chat("hi");
        req.stop = vec![" endless".into()];
        let (events, c) = run(req);
        assert_eq!(c.text, FULL_TEXT);
        assert_eq!(c.tail, " end");
        assert_eq!(joined(&events, &c), FULL_TEXT);
    }

    #[test]
    fn max_tokens_is_exact_and_flushes_partial_characters() {
        let mut req = GenerateRequest::chat("hi");
        req.max_tokens = 3;
        let (events, c) = run(req.clone());
        assert_eq!(events.len(), 3);
        assert_eq!(c.text, "Hello,");
        assert_eq!(c.finish_reason, FinishReason::MaxTokens);
        req.max_tokens = 5;
        let (events, c) = run(req);
        assert_eq!(events.len(), 5);
        assert_eq!(c.text, "Hello, w\u{fffd}");
    }

    #[test]
    fn ignore_eos_keeps_going() {
        let mut req = GenerateRequest::chat("hi");
        req.ignore_eos = true;
        req.max_tokens = 15;
        let (events, c) = run(req);
        assert_eq!(events.len(), 15);
        assert_eq!(c.tokens[SCRIPT.len()], EOS);
        assert_eq!(c.finish_reason, FinishReason::MaxTokens);
    }

    #[test]
    fn cancel_after_k_tokens_delivers_exactly_k() {
        let mut req = GenerateRequest::chat("hi");
        let cancel = req.cancel.clone();
        req.max_tokens = 100;
        let (events, c) = block_on(async {
            let model = MockModel::new();
            let mut s = model.new_session(SessionOptions::default()).await.unwrap();
            let mut events = Vec::new();
            let c = generate(model.as_ref(), s.as_mut(), req, |e| {
                events.push(e.clone());
                if events.len() == 2 {
                    cancel.cancel();
                }
            })
            .await
            .unwrap();
            (events, c)
        });
        assert_eq!(events.len(), 2);
        assert_eq!(c.finish_reason, FinishReason::Cancelled);
        assert_eq!(c.text, "Hello");
    }

    #[test]
    fn cancel_before_start_generates_nothing() {
        let req = GenerateRequest::chat("hi");
        req.cancel.cancel();
        let (events, c) = run(req);
        assert!(events.is_empty());
        assert_eq!(c.finish_reason, FinishReason::Cancelled);
    }

    #[test]
    fn second_turn_reuses_the_cache() {
        block_on(async {
            let model = MockModel::new();
            let mut s = model.new_session(SessionOptions::default()).await.unwrap();
            let mut conv = vec![ChatMessage::user("hi")];
            let c1 = generate(
                model.as_ref(),
                s.as_mut(),
                GenerateRequest::new(Prompt::Chat(conv.clone())),
                |_| {},
            )
            .await
            .unwrap();
            assert_eq!(c1.usage.cached_tokens, 0);
            conv.push(ChatMessage::assistant(c1.text.clone()));
            conv.push(ChatMessage::user("again"));
            let c2 = generate(
                model.as_ref(),
                s.as_mut(),
                GenerateRequest::new(Prompt::Chat(conv)),
                |_| {},
            )
            .await
            .unwrap();
            // Turn 1's prompt is a prefix of turn 2's: only the rest runs.
            assert!(c2.usage.cached_tokens >= c1.usage.prompt_tokens);
            assert_eq!(
                c2.usage.prefill_tokens,
                c2.usage.prompt_tokens - c2.usage.cached_tokens
            );
            assert_eq!(c2.text, FULL_TEXT);
        });
    }

    #[test]
    fn context_limits_are_typed() {
        block_on(async {
            let model = MockModel::new();
            let prompt = vec![BYTE0; 10];
            let mut s = model
                .new_session(SessionOptions {
                    context_length: Some(10),
                    ..Default::default()
                })
                .await
                .unwrap();
            let err = Generation::new(
                model.as_ref(),
                s.as_mut(),
                GenerateRequest::new(Prompt::Tokens(prompt.clone())),
            )
            .err()
            .unwrap();
            assert!(matches!(
                err,
                EngineError::ContextOverflow {
                    needed: 11,
                    capacity: 10
                }
            ));
            let mut s = model
                .new_session(SessionOptions {
                    context_length: Some(13),
                    ..Default::default()
                })
                .await
                .unwrap();
            let c = generate(
                model.as_ref(),
                s.as_mut(),
                GenerateRequest::new(Prompt::Tokens(prompt)),
                |_| {},
            )
            .await
            .unwrap();
            // 3 tokens fill the cache; a 4th can still be sampled from the
            // last logits, it just cannot be evaluated.
            assert_eq!(c.finish_reason, FinishReason::ContextFull);
            assert_eq!(c.tokens.len(), 4);
        });
    }

    #[test]
    fn empty_prompts_are_rejected() {
        block_on(async {
            let model = MockModel::new();
            let mut s = model.new_session(SessionOptions::default()).await.unwrap();
            for p in [
                Prompt::Text(String::new()),
                Prompt::Tokens(vec![]),
                Prompt::Chat(vec![ChatMessage::user("  ")]),
            ] {
                let r = Generation::new(model.as_ref(), s.as_mut(), GenerateRequest::new(p));
                assert!(matches!(r.err(), Some(EngineError::InvalidInput(_))));
            }
        });
    }

    #[test]
    fn stream_yields_tokens_then_done() {
        block_on(async {
            let model = MockModel::new();
            let mut s = model.new_session(SessionOptions::default()).await.unwrap();
            let g =
                Generation::new(model.as_ref(), s.as_mut(), GenerateRequest::chat("x")).unwrap();
            let events: Vec<_> = g.into_stream().collect().await;
            assert_eq!(events.len(), SCRIPT.len() + 1);
            match events.last().unwrap() {
                Ok(GenerationEvent::Done(c)) => assert_eq!(c.text, FULL_TEXT),
                other => panic!("{other:?}"),
            }
        });
    }

    #[test]
    fn logprobs_and_scoring_helpers() {
        block_on(async {
            let model = MockModel::new();
            let mut s = model.new_session(SessionOptions::default()).await.unwrap();
            let mut req = GenerateRequest::chat("x");
            req.logprobs = true;
            req.max_tokens = 2;
            let mut lps = Vec::new();
            generate(model.as_ref(), s.as_mut(), req, |e| {
                lps.push(e.logprob.unwrap())
            })
            .await
            .unwrap();
            assert!(lps.iter().all(|&l| l < 0.0 && l > -0.05), "{lps:?}");
            let toks = [BYTE0, FIRST, FIRST + 1];
            let all = teacher_forced_logits(s.as_mut(), &toks).await.unwrap();
            assert_eq!(all.rows(), 3);
            let last = next_token_logits(s.as_mut(), &toks).await.unwrap();
            assert_eq!(all.row(2), last.as_slice());
            assert_eq!(crate::sampler::argmax(all.row(0)), Some(FIRST));
        });
    }
}
