//! The assistant: gateway, specialists and cloud behind one call.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arny_engine_api::{
    CancelToken, ChatMessage, Constraint, EngineError, FinishReason, GenerateRequest,
    InferenceEngine, Model, Prompt, Role, SamplingParams, TokenId, Usage, generate,
    render_conversation,
};
use arny_router::{
    CLOUD, Classifier, Decision, ExampleClassifier, ExampleOptions, Gateway, LabelExamples,
};
use serde::Serialize;
use web_time::Instant;

use crate::events::{Event, EventBus};
use crate::manager::{AdapterRef, Lease, ManagerStatus, ModelKey, ModelManager, ModelRef};
use crate::manifest::{
    AdapterSpec, EngineKind, Manifest, ModelSpec, Plan, SpecialistSpec, Strategy,
};
use crate::request::SamplingOverrides;
use crate::{Result, SdkError};

/// Tokens a specialist may generate when its manifest entry does not say.
pub const DEFAULT_MAX_TOKENS: u32 = 256;

/// The engines an app makes available, by the ids manifests use.
#[derive(Clone, Default)]
pub struct Engines(HashMap<&'static str, Arc<dyn InferenceEngine>>);

impl Engines {
    /// Every engine compiled into this build.
    pub fn builtin() -> Self {
        #[allow(unused_mut)]
        let mut e = Self::default();
        #[cfg(feature = "gguf")]
        {
            e = e.with(Arc::new(arny_engine_gguf::GgufEngine::new()));
        }
        #[cfg(feature = "burn-cpu")]
        {
            e = e.with(Arc::new(arny_engine_burn_wgpu::BurnEngine::new()));
        }
        #[cfg(feature = "pte")]
        {
            e = e.with(Arc::new(arny_engine_pte::PteEngine::new()));
        }
        e
    }

    pub fn with(mut self, engine: Arc<dyn InferenceEngine>) -> Self {
        self.0.insert(engine.id(), engine);
        self
    }

    pub fn get(&self, kind: EngineKind) -> Option<&Arc<dyn InferenceEngine>> {
        self.0.get(kind.id())
    }
}

/// How an assistant is built.
pub struct AssistantOptions {
    pub engines: Engines,
    /// Fetch `known` models that are not in the models folder yet.
    pub fetch_missing: bool,
    /// Weights the app already holds (a browser download, an app bundle),
    /// by manifest model id. They replace that model's `path`, `known` or
    /// `url`; nothing is read from disk or the network for it.
    pub model_bytes: HashMap<String, Arc<[u8]>>,
    /// LoRA adapters the app already holds, by the manifest's name for
    /// them: the `url`, `known` id or `path` as written. They replace the
    /// download or the file; specialists naming the same adapter share it.
    pub adapter_bytes: HashMap<String, Arc<[u8]>>,
    /// Receives every event from the start, including the loads that
    /// [`Assistant::new`] itself does (the universal plan's model, a model
    /// gateway), which [`Assistant::events`] subscribes too late to see.
    pub events: Option<futures::channel::mpsc::UnboundedSender<Event>>,
}

impl Default for AssistantOptions {
    fn default() -> Self {
        Self {
            engines: Engines::builtin(),
            fetch_missing: true,
            model_bytes: HashMap::new(),
            adapter_bytes: HashMap::new(),
            events: None,
        }
    }
}

/// One question (or conversation) for the assistant.
#[derive(Clone)]
pub struct AskRequest {
    /// The conversation so far, without a system message; the last
    /// message is the user's. The gateway routes on that last message.
    pub messages: Vec<ChatMessage>,
    /// Skip the gateway and use this specialist.
    pub specialist: Option<String>,
    /// The gateway's decision, when the caller has routed the request
    /// already (to show where it goes before the answer starts); `ask`
    /// then does not route it again.
    pub decision: Option<Decision>,
    pub max_tokens: Option<u32>,
    /// Changes to the specialist's sampling, setting by setting.
    pub sampling: SamplingOverrides,
    pub stop: Vec<String>,
    /// What the answer must match (JSON Schema, regex, grammar); replaces
    /// the specialist's declared `output_schema`. Enforced token by token
    /// on-device; a request with one is never sent to the cloud.
    pub constraint: Option<Constraint>,
    /// Report each generated token's log-probability ([`Answer::logprobs`]).
    pub logprobs: bool,
    /// And this many most likely alternatives per token (needs `logprobs`).
    pub top_logprobs: u32,
    /// Complete the last user message's text as a raw prompt: no system
    /// prompt, no chat template (OpenAI's `/v1/completions`).
    pub raw: bool,
    pub cancel: CancelToken,
}

impl AskRequest {
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            messages: vec![ChatMessage::user(text)],
            specialist: None,
            decision: None,
            max_tokens: None,
            sampling: SamplingOverrides::default(),
            stop: Vec::new(),
            constraint: None,
            logprobs: false,
            top_logprobs: 0,
            raw: false,
            cancel: CancelToken::new(),
        }
    }

    /// Options only a local generation can honour, named for the error a
    /// cloud answer would be.
    fn local_only(&self) -> Option<&'static str> {
        if self.constraint.is_some() {
            Some("an output constraint")
        } else if self.logprobs {
            Some("logprobs")
        } else if self.raw {
            Some("a raw prompt")
        } else if self.sampling.presence_penalty.is_some()
            || self.sampling.frequency_penalty.is_some()
        {
            Some("presence/frequency penalties")
        } else {
            None
        }
    }
}

/// One generated token's log-probability, with the most likely
/// alternatives at its step when they were asked for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprob {
    /// The token's text (lossy where it holds part of a UTF-8 character).
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// Who answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Handler {
    Specialist {
        name: String,
    },
    Cloud {
        model: String,
    },
    /// The gateway chose the cloud, but a local specialist answered:
    /// `reason` says why (privacy, no cloud configured, unreachable).
    LocalStandIn {
        name: String,
        reason: String,
    },
}

impl Handler {
    /// The specialist name, or `cloud`.
    pub fn label(&self) -> &str {
        match self {
            Self::Specialist { name } | Self::LocalStandIn { name, .. } => name,
            Self::Cloud { .. } => CLOUD,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Specialist { name } => name.clone(),
            Self::Cloud { model } => format!("cloud ({model})"),
            Self::LocalStandIn { name, reason } => {
                format!("{name} (local stand-in for cloud: {reason})")
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    /// The gateway's decision; `None` when the request named a specialist.
    pub decision: Option<Decision>,
    pub handler: Handler,
    pub text: String,
    /// Why the answer ended. A cloud's `stop` is [`FinishReason::Eos`] and
    /// its `length` [`FinishReason::MaxTokens`]; its own word is in
    /// `cloud_finish_reason`.
    pub finish_reason: FinishReason,
    /// The cloud's `finish_reason` verbatim, for cloud answers.
    pub cloud_finish_reason: Option<String>,
    /// Local generations only.
    pub usage: Option<Usage>,
    /// The answer stopped before completing the request's constraint
    /// (see [`arny_engine_api::Completion::incomplete`]).
    pub incomplete: bool,
    /// Per-token log-probabilities, when the request asked for them.
    pub logprobs: Vec<TokenLogprob>,
    pub total_ms: f64,
}

impl Answer {
    /// Cancelled before a token was generated (while waiting for memory).
    fn cancelled(handler: Handler) -> Self {
        Self {
            decision: None,
            handler,
            text: String::new(),
            finish_reason: FinishReason::Cancelled,
            cloud_finish_reason: None,
            usage: Some(Usage::default()),
            incomplete: false,
            logprobs: Vec::new(),
            total_ms: 0.0,
        }
    }
}

/// What [`Assistant::embed`] returns.
#[derive(Debug, Clone, Serialize)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens read, over all texts.
    pub prompt_tokens: usize,
}

/// Everything the assistant holds, for a UI or `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub plan: Plan,
    pub strategy: &'static str,
    pub threshold: f32,
    pub cloud: Option<String>,
    pub specialists: Vec<String>,
    pub memory: ManagerStatus,
}

struct Specialist {
    name: String,
    system_prompt: String,
    model: ModelRef,
    chat_template: Option<String>,
    max_tokens: u32,
    sampling: SamplingParams,
    context_length: Option<u32>,
    /// The LoRA adapter its sessions run with, over `model`.
    adapter: Option<AdapterRef>,
    /// Its declared output shape, used when a request sets none.
    constraint: Option<Constraint>,
}

fn token_logprob(
    model: &dyn Model,
    token: TokenId,
    logprob: f32,
    top: &[(TokenId, f32)],
) -> TokenLogprob {
    let piece = |t: TokenId| model.token_bytes(t).map(<[u8]>::to_vec).unwrap_or_default();
    let bytes = piece(token);
    TokenLogprob {
        token: String::from_utf8_lossy(&bytes).into_owned(),
        bytes,
        logprob,
        top: top
            .iter()
            .map(|&(t, lp)| {
                let bytes = piece(t);
                TopLogprob {
                    token: String::from_utf8_lossy(&bytes).into_owned(),
                    bytes,
                    logprob: lp,
                }
            })
            .collect(),
    }
}

/// A specialist's sampling: its manifest settings where it has them.
/// Without a temperature it samples as llama.cpp does by default, with a
/// repetition penalty against the loops small models fall into
/// ([`SamplingParams::interactive`]); `temperature = 0` is greedy.
fn specialist_sampling(s: &SpecialistSpec) -> SamplingParams {
    let mut p = match s.temperature {
        Some(t) => SamplingParams::with_temperature(t),
        None => SamplingParams::interactive(),
    };
    if let Some(r) = s.repetition_penalty {
        p.repetition_penalty = r;
    }
    p
}

struct Inner {
    manifest: Manifest,
    manager: ModelManager,
    events: Arc<EventBus>,
    gateway: Gateway,
    specialists: Vec<Specialist>,
    #[cfg(feature = "cloud")]
    cloud: Option<arny_cloud::CloudClient>,
    /// Keeps pinned models (universal plan, model gateway) referenced.
    _pinned: Vec<Lease>,
}

/// An on-device assistant built from a [`Manifest`]. Cheap to clone; all
/// clones share models and state.
#[derive(Clone)]
pub struct Assistant {
    inner: Arc<Inner>,
}

impl Assistant {
    /// Builds the assistant: checks the manifest (one built in code too),
    /// resolves every model, loads what the plan keeps resident (the
    /// universal plan's model, a model gateway) and trains the gateway.
    pub async fn new(manifest: Manifest, options: AssistantOptions) -> Result<Self> {
        manifest.validate()?;
        let events = Arc::new(EventBus::default());
        if let Some(tx) = options.events.clone() {
            events.attach(tx);
        }
        let manager = ModelManager::new(
            manifest.memory_budget.0,
            Duration::from_secs_f64(manifest.idle_unload_secs),
            events.clone(),
        );
        manager.set_queue_timeout(Duration::from_secs_f64(manifest.queue_timeout_secs));
        let refs = model_refs(&manifest, &options)?;
        let specialists = specialists(&manifest, &refs, &options.adapter_bytes)?;
        let mut pinned = Vec::new();
        if manifest.plan == Plan::Universal {
            // One model for every role, loaded now and kept.
            let first = specialists
                .first()
                .ok_or_else(|| no_specialists(&manifest))?;
            pinned.push(pin(&manager, &first.model).await?);
        }
        let gateway = build_gateway(
            &manifest,
            &refs,
            &manager,
            &options.adapter_bytes,
            &mut pinned,
        )
        .await?;
        #[cfg(feature = "cloud")]
        let cloud = cloud_client(&manifest)?;
        // In a page the engines' futures are not Send, so neither is this;
        // nothing there crosses threads, and one type serves both targets.
        #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
        let inner = Arc::new(Inner {
            manifest,
            manager,
            events,
            gateway,
            specialists,
            #[cfg(feature = "cloud")]
            cloud,
            _pinned: pinned,
        });
        #[cfg(not(target_arch = "wasm32"))]
        spawn_reaper(&inner.manager);
        Ok(Self { inner })
    }

    /// The built-in manifest on the default model.
    pub async fn builtin() -> Result<Self> {
        Self::new(Manifest::builtin(), AssistantOptions::default()).await
    }

    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// Events from now on: routing decisions, loads, unloads.
    pub fn events(&self) -> futures::channel::mpsc::UnboundedReceiver<Event> {
        self.inner.events.subscribe()
    }

    pub fn status(&self) -> Status {
        let i = &self.inner;
        Status {
            plan: i.manifest.plan,
            strategy: i.gateway.classifier().strategy(),
            threshold: i.gateway.threshold(),
            cloud: self.cloud_model(),
            specialists: i.specialists.iter().map(|s| s.name.clone()).collect(),
            memory: i.manager.status(),
        }
    }

    fn cloud_model(&self) -> Option<String> {
        #[cfg(feature = "cloud")]
        {
            self.inner.cloud.as_ref().map(|c| c.config().model.clone())
        }
        #[cfg(not(feature = "cloud"))]
        {
            None
        }
    }

    pub fn specialist_names(&self) -> Vec<String> {
        self.inner
            .specialists
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    /// How long a request may wait for memory (the manifest's
    /// `queue_timeout_secs`).
    pub fn queue_timeout(&self) -> Duration {
        self.inner.manager.queue_timeout()
    }

    pub fn manager(&self) -> &ModelManager {
        &self.inner.manager
    }

    /// Unloads models idle past the timeout. A background thread does this
    /// on native targets; in the browser the app calls it from a timer.
    pub fn unload_idle(&self) -> usize {
        self.inner.manager.unload_idle()
    }

    /// Classifies one message. No model other than the gateway's runs.
    pub async fn route(&self, text: &str) -> Result<Decision> {
        if text.trim().is_empty() {
            return Err(SdkError::InvalidRequest("empty message".into()));
        }
        Ok(self.inner.gateway.route(text).await?)
    }

    fn specialist(&self, name: &str) -> Result<&Specialist> {
        self.inner
            .specialists
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| SdkError::UnknownSpecialist {
                name: name.to_string(),
                known: self.specialist_names().join(", "),
            })
    }

    /// Answers a request: routes it, then streams the answer from the chosen
    /// specialist or the cloud through `on_text`.
    pub async fn ask(
        &self,
        request: AskRequest,
        mut on_text: impl FnMut(&str) + Send,
    ) -> Result<Answer> {
        let started = Instant::now();
        let last_user = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.clone())
            .ok_or_else(|| {
                SdkError::InvalidRequest("the conversation has no user message".into())
            })?;
        if request.messages.iter().any(|m| m.role == Role::System) {
            return Err(SdkError::InvalidRequest(
                "system messages come from the specialist's system prompt; leave them out".into(),
            ));
        }
        let (decision, handler) = match &request.specialist {
            Some(name) => (
                None,
                Handler::Specialist {
                    name: self.specialist(name)?.name.clone(),
                },
            ),
            None => {
                let d = match &request.decision {
                    Some(d) => d.clone(),
                    None => self.route(&last_user).await?,
                };
                let h = self.handler_for(&d);
                self.inner.events.emit(Event::Routed {
                    label: d.label.clone(),
                    confidence: d.confidence,
                    handler: h.describe(),
                    strategy: d.strategy.to_string(),
                    ms: d.ms,
                });
                (Some(d), h)
            }
        };
        if matches!(handler, Handler::Cloud { .. })
            && let Some(what) = request.local_only()
        {
            return Err(SdkError::InvalidRequest(format!(
                "the gateway chose the cloud, which cannot honour {what}; name a specialist \
                 to answer on-device"
            )));
        }
        let mut answer = match &handler {
            Handler::Cloud { .. } => match self.ask_cloud(&request, &mut on_text).await {
                Ok(a) => a,
                #[cfg(feature = "cloud")]
                Err(SdkError::Cloud(e))
                    if e.is_unreachable()
                        && self
                            .inner
                            .manifest
                            .cloud
                            .as_ref()
                            .is_some_and(|c| c.local_when_unreachable) =>
                {
                    let name = decision
                        .as_ref()
                        .and_then(|d| d.best_local.clone())
                        .unwrap_or_else(|| self.first_specialist());
                    tracing::warn!(error = %e, specialist = %name, "cloud unreachable; answering locally");
                    let handler = Handler::LocalStandIn {
                        name,
                        reason: e.to_string(),
                    };
                    self.ask_local(&request, handler, &mut on_text).await?
                }
                Err(e) => return Err(e),
            },
            h => self.ask_local(&request, h.clone(), &mut on_text).await?,
        };
        answer.decision = decision;
        answer.total_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(answer)
    }

    /// Embeds `texts` with the model of `specialist` (the first
    /// specialist's when `None`): one L2-normalised vector per text, from
    /// the base model (a specialist's adapter shapes generation, not
    /// these). Engines without embeddings give
    /// [`arny_engine_api::EngineError::Unsupported`].
    pub async fn embed(&self, specialist: Option<&str>, texts: &[String]) -> Result<Embeddings> {
        let name = match specialist {
            Some(n) => n.to_string(),
            None => self.first_specialist(),
        };
        let sp = self.specialist(&name)?;
        let lease = self
            .inner
            .manager
            .acquire(&sp.model, &CancelToken::new())
            .await?;
        let model = lease.model().clone();
        let mut prompt_tokens = 0;
        for t in texts {
            prompt_tokens += model.tokenize(t, true, false)?.len();
        }
        let vectors = model.embed(texts).await?;
        Ok(Embeddings {
            vectors,
            prompt_tokens,
        })
    }

    /// The specialist that stands in when nothing better is known
    /// (validation guarantees there is one).
    fn first_specialist(&self) -> String {
        self.inner
            .specialists
            .first()
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }

    fn handler_for(&self, d: &Decision) -> Handler {
        if d.label != CLOUD {
            return Handler::Specialist {
                name: d.label.clone(),
            };
        }
        let local = d
            .best_local
            .clone()
            .unwrap_or_else(|| self.first_specialist());
        if let Some(model) = self.cloud_model() {
            return Handler::Cloud { model };
        }
        let reason = if self.inner.manifest.cloud.is_some() {
            "privacy is local_only"
        } else {
            "no cloud is configured"
        };
        Handler::LocalStandIn {
            name: local,
            reason: reason.to_string(),
        }
    }

    async fn ask_local(
        &self,
        request: &AskRequest,
        handler: Handler,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Answer> {
        let sp = self.specialist(handler.label())?;
        let lease = match self.inner.manager.acquire(&sp.model, &request.cancel).await {
            Ok(l) => l,
            // Cancelled while queued: the same answer as cancelled at once.
            Err(SdkError::Engine(EngineError::Cancelled)) => {
                return Ok(Answer::cancelled(handler));
            }
            Err(e) => return Err(e),
        };
        let model = lease.model().clone();
        let mut messages = Vec::with_capacity(request.messages.len() + 1);
        messages.push(ChatMessage::system(sp.system_prompt.clone()));
        messages.extend(request.messages.iter().cloned());
        let prompt = if request.raw {
            let text = request.messages.last().map(|m| m.content.clone());
            Prompt::Text(text.unwrap_or_default())
        } else {
            match &sp.chat_template {
                Some(t) => Prompt::Text(render_conversation(model.as_ref(), Some(t), &messages)?),
                None => Prompt::Chat(messages),
            }
        };
        let mut req = GenerateRequest::new(prompt);
        req.max_tokens = request.max_tokens.unwrap_or(sp.max_tokens);
        req.stop = request.stop.clone();
        req.cancel = request.cancel.clone();
        req.sampling = request.sampling.applied_to(&sp.sampling);
        req.constraint = request.constraint.clone().or_else(|| sp.constraint.clone());
        req.logprobs = request.logprobs;
        req.top_logprobs = request.top_logprobs;
        let adapter = match &sp.adapter {
            Some(a) => Some(lease.adapter(&sp.name, a).await?),
            None => None,
        };
        let mut session = match lease
            .session(&sp.name, sp.context_length, adapter, &request.cancel)
            .await
        {
            Ok(s) => s,
            Err(SdkError::Engine(EngineError::Cancelled)) => {
                return Ok(Answer::cancelled(handler));
            }
            Err(e) => return Err(e),
        };
        let mut logprobs = Vec::new();
        let completion = generate(model.as_ref(), session.get(), req, |t| {
            if let Some(lp) = t.logprob {
                logprobs.push(token_logprob(model.as_ref(), t.token, lp, &t.top_logprobs));
            }
            on_text(&t.text)
        })
        .await?;
        drop(session);
        Ok(Answer {
            decision: None,
            handler,
            text: completion.text,
            finish_reason: completion.finish_reason,
            cloud_finish_reason: None,
            usage: Some(completion.usage),
            incomplete: completion.incomplete,
            logprobs,
            total_ms: 0.0,
        })
    }

    #[cfg(feature = "cloud")]
    async fn ask_cloud(
        &self,
        request: &AskRequest,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Answer> {
        let client = self.inner.cloud.as_ref().ok_or_else(|| {
            SdkError::InvalidRequest("no cloud client: the manifest allows no cloud".into())
        })?;
        let model = client.config().model.clone();
        self.inner.events.emit(Event::CloudRequest {
            model: model.clone(),
        });
        let req = arny_cloud::ChatRequest {
            messages: request
                .messages
                .iter()
                .map(|m| arny_cloud::Message::new(m.role.as_str(), m.content.clone()))
                .collect(),
            max_tokens: request.max_tokens,
            temperature: request.sampling.temperature,
            stop: request.stop.clone(),
        };
        let cancel = request.cancel.clone();
        let cancelled = move || cancel.is_cancelled();
        let result = client.chat_stream(&req, &cancelled, on_text).await;
        let (text, cloud_reason) = match result {
            Ok(c) => (c.text, c.finish_reason.unwrap_or_else(|| "stop".into())),
            Err(arny_cloud::CloudError::Cancelled) => (String::new(), "cancelled".into()),
            Err(e) => return Err(e.into()),
        };
        let finish_reason = match cloud_reason.as_str() {
            "length" => FinishReason::MaxTokens,
            "cancelled" => FinishReason::Cancelled,
            _ => FinishReason::Eos,
        };
        Ok(Answer {
            decision: None,
            handler: Handler::Cloud { model },
            text,
            finish_reason,
            cloud_finish_reason: Some(cloud_reason),
            usage: None,
            incomplete: false,
            logprobs: Vec::new(),
            total_ms: 0.0,
        })
    }

    /// Without the cloud feature the gateway's `cloud` becomes a local
    /// stand-in before this could be reached; fail typed all the same.
    #[cfg(not(feature = "cloud"))]
    async fn ask_cloud(&self, _: &AskRequest, _: &mut (dyn FnMut(&str) + Send)) -> Result<Answer> {
        Err(SdkError::InvalidRequest(
            "this build has no cloud client (the `cloud` feature)".into(),
        ))
    }
}

fn resolve_path(manifest: &Manifest, spec: &ModelSpec, fetch_missing: bool) -> Result<PathBuf> {
    if let Some(p) = &spec.path {
        return Ok(if p.is_absolute() {
            p.clone()
        } else {
            manifest.base_dir.join(p)
        });
    }
    if let Some(k) = &spec.known {
        let known = arny_model_store::known(k).ok_or_else(|| {
            manifest_error(
                manifest,
                format!("model `{}`: no known model `{k}`", spec.id.get_ref()),
            )
        })?;
        // ARNY_MODEL points the default model somewhere else.
        if known.id == arny_model_store::DEFAULT_MODEL.id
            && let Ok(p) = std::env::var(arny_model_store::MODEL_ENV)
        {
            return Ok(PathBuf::from(p));
        }
        return match arny_model_store::locate(known) {
            Ok(p) => Ok(p),
            Err(_) if fetch_missing => Ok(arny_model_store::fetch(
                known,
                &arny_model_store::NoProgress,
            )?),
            Err(e) => Err(e.into()),
        };
    }
    let (Some(url), Some(sha)) = (spec.url.as_deref(), spec.sha256.as_deref()) else {
        return Err(manifest_error(
            manifest,
            format!(
                "model `{}`: no `path`, `known` or `url` + `sha256`",
                spec.id.get_ref()
            ),
        ));
    };
    Ok(arny_model_store::download(
        url,
        sha,
        &arny_model_store::NoProgress,
    )?)
}

fn manifest_error(manifest: &Manifest, message: String) -> SdkError {
    SdkError::Manifest {
        origin: manifest.origin.clone(),
        line: None,
        message,
    }
}

fn no_specialists(manifest: &Manifest) -> SdkError {
    manifest_error(manifest, "`specialists`: at least one is needed".into())
}

/// The model a manifest id names; an error (never a panic) for an id that
/// is not there, which only a manifest edited after validation can have.
fn model_ref<'a>(
    manifest: &Manifest,
    refs: &'a HashMap<String, ModelRef>,
    id: &str,
) -> Result<&'a ModelRef> {
    refs.get(id)
        .ok_or_else(|| manifest_error(manifest, format!("no model `{id}` in [[models]]")))
}

/// One [`ModelRef`] per manifest model. Models that name the same file and
/// engine share one resident copy, and each copy lists every specialist it
/// serves.
fn model_refs(
    manifest: &Manifest,
    options: &AssistantOptions,
) -> Result<HashMap<String, ModelRef>> {
    let mut refs: HashMap<String, ModelRef> = HashMap::new();
    let mut by_key: HashMap<ModelKey, String> = HashMap::new();
    for spec in &manifest.models {
        let id = spec.id.get_ref().clone();
        let engine = options.engines.get(spec.engine).cloned().ok_or_else(|| {
            SdkError::EngineUnavailable {
                model: id.clone(),
                engine: spec.engine.id().to_string(),
            }
        })?;
        let bytes = options.model_bytes.get(&id).cloned();
        let key = match &bytes {
            // Not a file: the key only has to be unique per model.
            Some(_) => ModelKey {
                engine: spec.engine,
                path: PathBuf::from(format!("memory:{id}")),
            },
            None => model_key(manifest, spec, options.fetch_missing)?,
        };
        let shared_id = by_key
            .entry(key.clone())
            .or_insert_with(|| id.clone())
            .clone();
        let estimate = match &bytes {
            Some(b) => b.len() as u64,
            None => std::fs::metadata(&key.path).map(|m| m.len()).unwrap_or(0),
        };
        refs.insert(
            id,
            ModelRef {
                id: shared_id,
                key,
                bytes,
                engine,
                context_length: spec.context_length,
                threads: spec.threads,
                device: spec.device.unwrap_or_default(),
                estimate,
                specialists: Vec::new(),
            },
        );
    }
    let mut served: HashMap<ModelKey, Vec<String>> = HashMap::new();
    for s in &manifest.specialists {
        let r = model_ref(manifest, &refs, s.model.get_ref())?;
        served
            .entry(r.key.clone())
            .or_default()
            .push(s.name.get_ref().clone());
    }
    for r in refs.values_mut() {
        r.specialists = served.get(&r.key).cloned().unwrap_or_default();
    }
    Ok(refs)
}

/// Where a model's file is (fetched or downloaded first if it must be).
fn model_key(manifest: &Manifest, spec: &ModelSpec, fetch_missing: bool) -> Result<ModelKey> {
    let path = resolve_path(manifest, spec, fetch_missing)?;
    let key = ModelKey {
        engine: spec.engine,
        path: std::fs::canonicalize(&path).unwrap_or(path),
    };
    if !key.path.is_file() {
        // Not fatal: the specialists on this model fail when asked, the
        // others keep working.
        tracing::warn!(model = %spec.id.get_ref(), path = %key.path.display(), "model file is missing");
    }
    Ok(key)
}

fn specialists(
    manifest: &Manifest,
    refs: &HashMap<String, ModelRef>,
    adapter_bytes: &HashMap<String, Arc<[u8]>>,
) -> Result<Vec<Specialist>> {
    manifest
        .specialists
        .iter()
        .map(|s| {
            let id = s.model.get_ref();
            let spec = manifest.model(id).ok_or_else(|| {
                manifest_error(manifest, format!("no model `{id}` in [[models]]"))
            })?;
            Ok(Specialist {
                name: s.name.get_ref().clone(),
                system_prompt: s.system_prompt.clone(),
                model: model_ref(manifest, refs, id)?.clone(),
                chat_template: spec.chat_template.clone(),
                max_tokens: s.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
                sampling: specialist_sampling(s),
                context_length: spec.context_length,
                adapter: s
                    .adapter
                    .as_ref()
                    .map(|a| adapter_ref(manifest, s.name.get_ref(), a, adapter_bytes))
                    .transpose()?,
                constraint: manifest.output_constraint(s)?,
            })
        })
        .collect()
}

/// Where a specialist's adapter is: bytes the app holds, a file (relative
/// to the manifest), a known adapter (written into the cache from this
/// build), or a download.
fn adapter_ref(
    manifest: &Manifest,
    specialist: &str,
    a: &AdapterSpec,
    held: &HashMap<String, Arc<[u8]>>,
) -> Result<AdapterRef> {
    if let Some((key, bytes)) = a.name().and_then(|k| held.get_key_value(k)) {
        return Ok(AdapterRef {
            name: key.clone(),
            // Not a file: only has to identify the adapter.
            path: PathBuf::from(format!("memory:adapter:{key}")),
            bytes: Some(bytes.clone()),
            scale: a.scale.unwrap_or(1.0),
        });
    }
    let (name, path) = if let Some(p) = &a.path {
        let path = if p.is_absolute() {
            p.clone()
        } else {
            manifest.base_dir.join(p)
        };
        (p.display().to_string(), path)
    } else if let Some(k) = &a.known {
        let known = arny_model_store::known_adapter(k).ok_or_else(|| {
            manifest_error(
                manifest,
                format!("specialist `{specialist}`: no known adapter `{k}`"),
            )
        })?;
        (
            known.id.to_string(),
            arny_model_store::locate_adapter(known)?,
        )
    } else if let (Some(url), Some(sha)) = (a.url.as_deref(), a.sha256.as_deref()) {
        let path = arny_model_store::download(url, sha, &arny_model_store::NoProgress)?;
        (url.to_string(), path)
    } else {
        return Err(manifest_error(
            manifest,
            format!(
                "specialist `{specialist}`: the adapter needs `path`, `known` or `url` + `sha256`"
            ),
        ));
    };
    Ok(AdapterRef {
        name,
        path: std::fs::canonicalize(&path).unwrap_or(path),
        bytes: None,
        scale: a.scale.unwrap_or(1.0),
    })
}

/// Loads a model and keeps it resident for the assistant's lifetime.
async fn pin(manager: &ModelManager, r: &ModelRef) -> Result<Lease> {
    let lease = manager.acquire(r, &CancelToken::new()).await?;
    manager.pin(&r.key);
    Ok(lease)
}

#[cfg(feature = "cloud")]
fn cloud_client(manifest: &Manifest) -> Result<Option<arny_cloud::CloudClient>> {
    let Some(c) = manifest.cloud.as_ref().filter(|_| manifest.cloud_allowed()) else {
        return Ok(None);
    };
    let mut cfg = arny_cloud::CloudConfig::new(c.base_url.clone(), c.model.clone());
    cfg.api_key = c.api_key_env.as_ref().and_then(|v| std::env::var(v).ok());
    if c.api_key_env.is_some() && cfg.api_key.is_none() {
        tracing::warn!(
            var = c.api_key_env.as_deref().unwrap_or(""),
            "the cloud API key variable is not set"
        );
    }
    cfg.timeout = Duration::from_secs_f64(c.timeout_secs);
    cfg.connect_timeout = Duration::from_secs_f64(c.connect_timeout_secs);
    Ok(Some(arny_cloud::CloudClient::new(cfg)?))
}

/// The example utterances per label: the specialists' and the cloud's.
fn label_examples(manifest: &Manifest) -> Vec<LabelExamples> {
    let mut sets: Vec<LabelExamples> = manifest
        .specialists
        .iter()
        .map(|s| LabelExamples {
            label: s.name.get_ref().clone(),
            examples: s.examples.clone(),
        })
        .collect();
    if !manifest.gateway.cloud_examples.is_empty() {
        sets.push(LabelExamples {
            label: CLOUD.into(),
            examples: manifest.gateway.cloud_examples.clone(),
        });
    }
    sets
}

/// The labels as the model strategy describes them to the model.
fn label_prompts(manifest: &Manifest) -> Vec<arny_router::LabelPrompt> {
    manifest
        .specialists
        .iter()
        .map(|s| arny_router::LabelPrompt {
            label: s.name.get_ref().clone(),
            description: s
                .description
                .clone()
                .unwrap_or_else(|| s.name.get_ref().clone()),
        })
        .chain(std::iter::once(arny_router::LabelPrompt {
            label: CLOUD.into(),
            description: "anything else: general knowledge, writing, translation, code".into(),
        }))
        .collect()
}

/// Every example utterance of `manifest` as a chat for `arny tune`
/// (`{"messages": [...], "answer": label word}` per line): what the model
/// strategy shows the gateway model, and the answer it should score
/// highest. A gateway adapter tuned on these is named in
/// `[gateway] adapter`.
pub fn gateway_training_data(manifest: &Manifest) -> Vec<serde_json::Value> {
    let prompts = label_prompts(manifest);
    label_examples(manifest)
        .iter()
        .flat_map(|set| {
            let prompts = &prompts;
            set.examples
                .iter()
                .filter(|e| !e.trim().is_empty())
                .map(move |e| {
                    serde_json::json!({
                        "messages": arny_router::training_example(prompts, &set.label, e),
                        "answer": arny_router::answer_word(&set.label),
                    })
                })
        })
        .collect()
}

async fn build_gateway(
    manifest: &Manifest,
    refs: &HashMap<String, ModelRef>,
    manager: &ModelManager,
    adapter_bytes: &HashMap<String, Arc<[u8]>>,
    pinned: &mut Vec<Lease>,
) -> Result<Gateway> {
    let g = &manifest.gateway;
    let sets = label_examples(manifest);
    let examples = || -> Result<Arc<dyn Classifier>> {
        let c = ExampleClassifier::train(&sets, &ExampleOptions::default())?;
        tracing::info!(report = ?c.report(), "gateway classifier trained");
        Ok(Arc::new(c))
    };
    let model = async |pinned: &mut Vec<Lease>| -> Result<Arc<dyn Classifier>> {
        let id = g
            .model
            .as_ref()
            .ok_or_else(|| {
                manifest_error(
                    manifest,
                    format!("gateway.model: strategy `{}` needs one", g.strategy.name()),
                )
            })?
            .get_ref();
        let lease = pin(manager, model_ref(manifest, refs, id)?).await?;
        let prompts = label_prompts(manifest);
        let adapter = match &g.adapter {
            Some(spec) => {
                let r = adapter_ref(manifest, "gateway", spec, adapter_bytes)?;
                Some(lease.adapter("gateway", &r).await?)
            }
            None => None,
        };
        let opts = arny_router::ScorerOptions {
            calibration_per_label: g.calibration_per_label,
            few_shot: g.few_shot,
            adapter,
            ..Default::default()
        };
        let scorer =
            arny_router::ModelScorer::new(lease.model().clone(), &prompts, &sets, &opts).await?;
        pinned.push(lease);
        let scorer: Arc<dyn Classifier> = Arc::new(scorer);
        Ok(scorer)
    };
    let classifier: Arc<dyn Classifier> = match g.strategy {
        Strategy::Examples => examples()?,
        Strategy::Model => model(pinned).await?,
        Strategy::Ensemble => Arc::new(arny_router::Ensemble::new(
            examples()?,
            model(pinned).await?,
            g.model_weight,
        )?),
    };
    Ok(Gateway::new(classifier, g.threshold)?)
}

#[cfg(not(target_arch = "wasm32"))]
fn spawn_reaper(manager: &ModelManager) {
    let weak = manager.downgrade();
    let every =
        (manager.idle_timeout() / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let spawned = std::thread::Builder::new()
        .name("arny-idle-unload".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                // Ends with the assistant.
                let Some(inner) = weak.upgrade() else { return };
                ModelManager::from_inner(inner).unload_idle();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no idle-unload thread; models unload only when evicted");
    }
}
