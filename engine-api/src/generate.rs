//! The generation loop, written once for every engine.

use futures::Stream;
use serde::{Deserialize, Serialize};
use web_time::Instant;

use crate::constraint::{Constraint, ConstraintState};
use crate::sampler::{Sampler, SamplingParams, log_prob, top_log_probs};
use crate::text::{StopMatcher, Utf8Stream};
use crate::{
    CancelToken, ChatMessage, EngineError, Logits, LogitsRequest, Model, Result, Session, TokenId,
};

/// What to generate from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// A conversation, rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
    /// Raw text, tokenized as is (special-token texts are parsed).
    Text(String),
    /// Token ids, used as is.
    Tokens(Vec<TokenId>),
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub sampling: SamplingParams,
    /// Upper bound on generated tokens.
    pub max_tokens: u32,
    /// Generation ends when the text contains any of these; the stop string
    /// itself is not part of the output.
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// Report each token's log-probability under the model.
    pub logprobs: bool,
    /// Also report this many most likely alternatives at each step (0-20);
    /// needs `logprobs`.
    pub top_logprobs: u32,
    /// What the output must match; enforced at every token (see
    /// [`crate::Constraint`]).
    pub constraint: Option<Constraint>,
    pub cancel: CancelToken,
}

/// The most alternatives a request may ask for per token.
pub const MAX_TOP_LOGPROBS: u32 = 20;

impl GenerateRequest {
    pub fn new(prompt: Prompt) -> Self {
        Self {
            prompt,
            sampling: SamplingParams::default(),
            max_tokens: 256,
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: false,
            top_logprobs: 0,
            constraint: None,
            cancel: CancelToken::new(),
        }
    }

    /// A single user message.
    pub fn chat(user: impl Into<String>) -> Self {
        Self::new(Prompt::Chat(vec![ChatMessage::user(user)]))
    }
}

/// One generated token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenEvent {
    /// 0-based position among the generated tokens.
    pub index: u32,
    pub token: TokenId,
    /// Text this token completes. Never splits a UTF-8 character; may be
    /// empty while a character or a possible stop string is incomplete.
    pub text: String,
    pub logprob: Option<f32>,
    /// The most likely tokens at this step with their log-probabilities,
    /// best first (requests with `top_logprobs`). They are the model's
    /// unconstrained probabilities, before penalties.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_logprobs: Vec<(TokenId, f32)>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-generation token, or the request's
    /// constraint was complete and allowed nothing else.
    Eos,
    /// A stop string appeared.
    StopString,
    MaxTokens,
    /// The session's context is full.
    ContextFull,
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eos => "eos",
            Self::StopString => "stop_string",
            Self::MaxTokens => "max_tokens",
            Self::ContextFull => "context_full",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Token counts and timings of one generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens found in the session's KV cache and not recomputed.
    pub cached_tokens: usize,
    /// Prompt tokens run through the model (`prompt_tokens - cached_tokens`).
    pub prefill_tokens: usize,
    pub generated_tokens: usize,
    /// Request start to first token.
    pub ttft_ms: f64,
    pub prefill_ms: f64,
    /// First token to last token.
    pub decode_ms: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub total_ms: f64,
}

/// The result of a finished generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// All text shown to the user (stop string excluded).
    pub text: String,
    /// Generated token ids; end-of-generation tokens are not included.
    pub tokens: Vec<TokenId>,
    pub finish_reason: FinishReason,
    /// The stop string that ended generation, if one did.
    pub stop: Option<String>,
    /// Text released only at the end (a held-back partial stop string or
    /// character). A streaming consumer prints it after the last event;
    /// it is already part of `text`.
    pub tail: String,
    /// The request had a constraint and the output does not complete it
    /// (generation ended on `max_tokens`, a full context, a stop string or
    /// a cancel). Always false without a constraint.
    #[serde(default)]
    pub incomplete: bool,
    pub usage: Usage,
}

/// What a generation stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    Token(TokenEvent),
    Done(Completion),
}

/// A generation in progress: pull tokens with [`Generation::next_token`].
pub struct Generation<'a> {
    model: &'a dyn Model,
    session: &'a mut dyn Session,
    request: GenerateRequest,
    sampler: Sampler,
    constraint: Option<ConstraintState>,
    utf8: Utf8Stream,
    stops: StopMatcher,
    /// Logits for the next token; `None` until prefill has run.
    next_logits: Option<Logits>,
    prompt: Vec<TokenId>,
    generated: Vec<TokenId>,
    text: String,
    tail: String,
    stop_hit: Option<String>,
    finished: Option<FinishReason>,
    started: Instant,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
    usage: Usage,
}

impl<'a> Generation<'a> {
    /// Validates the request and tokenizes the prompt. Nothing runs through
    /// the model until the first [`Generation::next_token`].
    pub fn new(
        model: &'a dyn Model,
        session: &'a mut dyn Session,
        request: GenerateRequest,
    ) -> Result<Self> {
        let started = Instant::now();
        let sampler = Sampler::new(request.sampling.clone(), model.default_seed())?;
        if request.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(EngineError::InvalidInput(format!(
                "top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {}",
                request.top_logprobs
            )));
        }
        if request.top_logprobs > 0 && !request.logprobs {
            return Err(EngineError::InvalidInput(
                "top_logprobs needs logprobs".into(),
            ));
        }
        if request.ignore_eos && request.constraint.is_some() {
            return Err(EngineError::InvalidInput(
                "ignore_eos cannot be combined with a constraint: a complete match must end".into(),
            ));
        }
        let prompt = prompt_tokens(model, &request.prompt)?;
        if prompt.is_empty() {
            return Err(EngineError::InvalidInput("empty prompt".into()));
        }
        let capacity = session.context_length();
        if prompt.len() >= capacity {
            // One slot must stay free for the first generated token.
            return Err(EngineError::ContextOverflow {
                needed: prompt.len() + 1,
                capacity,
            });
        }
        let constraint = match &request.constraint {
            Some(c) => Some(ConstraintState::new(model, c)?),
            None => None,
        };
        let stops = StopMatcher::new(request.stop.clone());
        let usage = Usage {
            prompt_tokens: prompt.len(),
            ..Usage::default()
        };
        Ok(Self {
            model,
            session,
            request,
            sampler,
            constraint,
            utf8: Utf8Stream::new(),
            stops,
            next_logits: None,
            prompt,
            generated: Vec::new(),
            text: String::new(),
            tail: String::new(),
            stop_hit: None,
            finished: None,
            started,
            first_token_at: None,
            last_token_at: None,
            usage,
        })
    }

    /// The prompt's token ids.
    pub fn prompt_tokens(&self) -> &[TokenId] {
        &self.prompt
    }

    /// Reuses the cached prefix and runs the rest of the prompt, in chunks
    /// so that a cancel lands between them.
    async fn prefill(&mut self) -> Result<()> {
        let cached = common_prefix(self.session.tokens(), &self.prompt);
        // The last prompt token is always evaluated: its logits pick the
        // first generated token.
        let reuse = cached.min(self.prompt.len() - 1);
        self.session.truncate(reuse)?;
        let t0 = Instant::now();
        let chunk = self.session.preferred_batch().max(1);
        let rest = &self.prompt[reuse..];
        let mut logits = None;
        let mut evaluated = 0;
        for (i, part) in rest.chunks(chunk).enumerate() {
            if self.request.cancel.is_cancelled() {
                self.finished = Some(FinishReason::Cancelled);
                break;
            }
            let last = (i + 1) * chunk >= rest.len();
            let want = if last {
                LogitsRequest::Last
            } else {
                LogitsRequest::None
            };
            let out = self.session.eval(part, want).await?;
            evaluated += part.len();
            if last {
                logits = Some(out);
            }
        }
        let prefill = t0.elapsed().as_secs_f64();
        self.usage.cached_tokens = reuse;
        self.usage.prefill_tokens = evaluated;
        self.usage.prefill_ms = prefill * 1e3;
        self.usage.prefill_tok_s = rate(evaluated, prefill);
        self.next_logits = Some(logits.unwrap_or_default());
        Ok(())
    }

    /// The next generated token, or `None` once generation has ended
    /// (then [`Generation::finish`] tells why).
    pub async fn next_token(&mut self) -> Result<Option<TokenEvent>> {
        if self.finished.is_some() {
            return Ok(None);
        }
        if self.next_logits.is_none() {
            self.prefill().await?;
            if self.finished.is_some() {
                return Ok(None);
            }
        }
        if self.request.cancel.is_cancelled() {
            return Ok(self.end(FinishReason::Cancelled));
        }
        if self.generated.len() >= self.request.max_tokens as usize {
            return Ok(self.end(FinishReason::MaxTokens));
        }
        let logits = self.next_logits.take().unwrap_or_default();
        let mask = match &mut self.constraint {
            Some(c) => Some(c.mask()?),
            None => None,
        };
        let token =
            self.sampler
                .sample_allowed(logits.last(), self.session.tokens(), mask.as_ref())?;
        let (logprob, top_logprobs) = if self.request.logprobs {
            (
                log_prob(logits.last(), token),
                top_log_probs(logits.last(), self.request.top_logprobs as usize),
            )
        } else {
            (None, Vec::new())
        };
        if !self.request.ignore_eos && self.model.special_tokens().is_end_of_generation(token) {
            return Ok(self.end(FinishReason::Eos));
        }
        // The matcher only refuses what its own mask did not allow, so a
        // failure here is internal; it ends the request, never the
        // constraint.
        let mut complete = false;
        if let Some(c) = &mut self.constraint {
            c.consume(token)?;
            complete = c.is_stopped();
        }

        let now = Instant::now();
        if self.first_token_at.is_none() {
            self.first_token_at = Some(now);
            self.usage.ttft_ms = (now - self.started).as_secs_f64() * 1e3;
        }
        self.last_token_at = Some(now);
        let index = self.generated.len() as u32;
        self.generated.push(token);

        let piece = self.utf8.push(self.model.token_bytes(token)?);
        let scan = self.stops.push(&piece);
        let mut text = scan.emit;
        if let Some(stop) = scan.stopped {
            self.stop_hit = Some(stop);
            self.text.push_str(&text);
            self.finished = Some(FinishReason::StopString);
            return Ok(Some(TokenEvent {
                index,
                token,
                text,
                logprob,
                top_logprobs,
            }));
        }

        let end = if complete {
            Some(FinishReason::Eos)
        } else if self.generated.len() >= self.request.max_tokens as usize {
            Some(FinishReason::MaxTokens)
        } else if self.session.tokens().len() + 1 > self.session.context_length() {
            Some(FinishReason::ContextFull)
        } else {
            None
        };
        match end {
            Some(reason) => {
                // No later event will carry held-back text: flush it here.
                text.push_str(&self.flush_held());
                self.finished = Some(reason);
            }
            None => {
                let out = self.session.eval(&[token], LogitsRequest::Last).await?;
                self.next_logits = Some(out);
            }
        }
        self.text.push_str(&text);
        Ok(Some(TokenEvent {
            index,
            token,
            text,
            logprob,
            top_logprobs,
        }))
    }

    fn flush_held(&mut self) -> String {
        let rest = self.utf8.finish();
        let scan = self.stops.push(&rest);
        let mut out = scan.emit;
        if let Some(stop) = scan.stopped {
            self.stop_hit = Some(stop);
        } else {
            out.push_str(&self.stops.finish());
        }
        out
    }

    /// Marks the end and moves held-back text into the tail.
    fn end(&mut self, reason: FinishReason) -> Option<TokenEvent> {
        let tail = self.flush_held();
        self.text.push_str(&tail);
        self.tail = tail;
        self.finished = Some(if self.stop_hit.is_some() {
            FinishReason::StopString
        } else {
            reason
        });
        None
    }

    /// Ends the generation (cancelling it if still running) and returns
    /// what was produced.
    pub fn finish(mut self) -> Completion {
        if self.finished.is_none() {
            self.end(FinishReason::Cancelled);
        }
        let n = self.generated.len();
        self.usage.generated_tokens = n;
        if let (Some(first), Some(last)) = (self.first_token_at, self.last_token_at) {
            let decode = (last - first).as_secs_f64();
            self.usage.decode_ms = decode * 1e3;
            self.usage.decode_tok_s = rate(n.saturating_sub(1), decode);
        }
        self.usage.total_ms = self.started.elapsed().as_secs_f64() * 1e3;
        let finish_reason = self.finished.unwrap_or(FinishReason::Cancelled);
        let incomplete = match &mut self.constraint {
            Some(c) => finish_reason != FinishReason::Eos || !c.is_accepting(),
            None => false,
        };
        Completion {
            text: self.text,
            tokens: self.generated,
            finish_reason,
            stop: self.stop_hit,
            tail: self.tail,
            incomplete,
            usage: self.usage,
        }
    }

    /// The generation as a stream: token events, then one `Done`.
    pub fn into_stream(self) -> impl Stream<Item = Result<GenerationEvent>> + 'a {
        futures::stream::unfold(Some(self), |state| async move {
            let mut g = state?;
            match g.next_token().await {
                Ok(Some(ev)) => Some((Ok(GenerationEvent::Token(ev)), Some(g))),
                Ok(None) => Some((Ok(GenerationEvent::Done(g.finish())), None)),
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}

/// Runs a whole generation, calling `on_token` for each token.
pub async fn generate(
    model: &dyn Model,
    session: &mut dyn Session,
    request: GenerateRequest,
    mut on_token: impl FnMut(&TokenEvent),
) -> Result<Completion> {
    let mut g = Generation::new(model, session, request)?;
    while let Some(ev) = g.next_token().await? {
        on_token(&ev);
    }
    Ok(g.finish())
}

/// Tokenizes a prompt the way generation does.
pub fn prompt_tokens(model: &dyn Model, prompt: &Prompt) -> Result<Vec<TokenId>> {
    let text = match prompt {
        Prompt::Tokens(t) => return Ok(t.clone()),
        Prompt::Text(t) => {
            if t.is_empty() {
                return Err(EngineError::InvalidInput("empty prompt".into()));
            }
            t.clone()
        }
        Prompt::Chat(messages) => {
            if messages.iter().all(|m| m.content.trim().is_empty()) {
                return Err(EngineError::InvalidInput("empty prompt".into()));
            }
            model.render_chat(messages, true)?
        }
    };
    let special = model.special_tokens();
    // Templates that write BOS themselves must not get a second one.
    let bos_text = special
        .bos
        .and_then(|b| model.token_bytes(b).ok())
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("");
    let add_bos = special.add_bos && (bos_text.is_empty() || !text.starts_with(bos_text));
    let mut tokens = model.tokenize(&text, false, true)?;
    if add_bos && let Some(bos) = special.bos {
        tokens.insert(0, bos);
    }
    Ok(tokens)
}

/// Logits of the next token after `tokens`, computed from scratch.
pub async fn next_token_logits(session: &mut dyn Session, tokens: &[TokenId]) -> Result<Vec<f32>> {
    if tokens.is_empty() {
        return Err(EngineError::InvalidInput("empty token sequence".into()));
    }
    session.truncate(0)?;
    Ok(session
        .eval(tokens, LogitsRequest::Last)
        .await?
        .last()
        .to_vec())
}

/// Teacher-forced logits: row `i` predicts `tokens[i + 1]`.
pub async fn teacher_forced_logits(
    session: &mut dyn Session,
    tokens: &[TokenId],
) -> Result<Logits> {
    if tokens.is_empty() {
        return Err(EngineError::InvalidInput("empty token sequence".into()));
    }
    session.truncate(0)?;
    session.eval(tokens, LogitsRequest::All).await
}

fn common_prefix(a: &[TokenId], b: &[TokenId]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}
