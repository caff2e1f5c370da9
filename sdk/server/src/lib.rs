//! Serves an [`Assistant`] on loopback as an OpenAI-compatible API, so any
//! OpenAI client library (or the SDK's own cloud client on another device)
//! can talk to it.
//!
//! - `GET /v1/models`: `arny` (routed by the gateway) and one model per
//!   specialist (skips the gateway).
//! - `POST /v1/chat/completions`: streamed (SSE) or not, with
//!   `response_format` (JSON object, JSON Schema) and `tools` enforced by
//!   constrained decoding, `n`, `logprobs`, penalties, `seed`, `stop`.
//!   The specialist's system prompt is used; system messages from the
//!   client are refused. Answers carry an extra `arny` object: who answered
//!   and why.
//! - `POST /v1/completions`: a raw prompt completed by a specialist's model.
//! - `POST /v1/embeddings`: from a specialist's model, where its engine
//!   embeds (llama.cpp does); a typed error elsewhere.
//! - `GET /v1/status`: loaded models, bytes, budget (Arny's own).
//!
//! Nothing a client asks for is dropped: a request field is honoured, or
//! the request is a 400 naming it ([`HARMLESS_FIELDS`] are the exception).
//! Every error has OpenAI's JSON shape.
//!
//! Generation runs on tokio's blocking pool, one request per thread; a
//! client that disconnects mid-stream cancels its generation.

// Handlers return a ready `Response` as their error: that is axum's idiom,
// and the error path is cold, so its size does not matter.
#![allow(clippy::result_large_err)]

mod tools;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};

use arny_sdk::{
    Answer, AskRequest, Assistant, CancelToken, ChatMessage, Constraint, FinishReason, Role,
    SamplingOverrides, SdkError, TokenLogprob,
};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use futures::StreamExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

/// The model id that lets the gateway choose.
pub const ROUTED_MODEL: &str = "arny";

/// Request fields accepted without effect, because they cannot change an
/// answer: `user` (an end-user id for abuse tracking) and `metadata`
/// (labels for stored completions, which this server does not store).
pub const HARMLESS_FIELDS: &[&str] = &["user", "metadata"];

/// The most choices one request may ask for (`n`); each is a full
/// generation, run one after another.
pub const MAX_CHOICES: u32 = 8;

#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// When set, requests need `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Generations at once; more wait in a first-come queue.
    pub max_concurrent: usize,
    /// Requests that may wait for a slot; past that they get HTTP 429
    /// with `Retry-After`.
    pub max_queue: usize,
    /// How long a request waits for a slot before HTTP 503
    /// `queue_timeout`; `None`: the manifest's `queue_timeout_secs`.
    pub queue_timeout: Option<Duration>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            api_key: None,
            max_concurrent: 4,
            max_queue: 64,
            queue_timeout: None,
        }
    }
}

struct AppState {
    assistant: Assistant,
    options: ServerOptions,
    /// tokio's semaphore is fair: waiters get permits in arrival order.
    slots: Semaphore,
    queued: AtomicUsize,
    queue_timeout: Duration,
}

pub fn router(assistant: Assistant, options: ServerOptions) -> Router {
    let state = Arc::new(AppState {
        slots: Semaphore::new(options.max_concurrent.max(1)),
        queued: AtomicUsize::new(0),
        queue_timeout: options
            .queue_timeout
            .unwrap_or_else(|| assistant.queue_timeout()),
        assistant,
        options,
    });
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/status", get(status))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Serves until the future is dropped or the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    assistant: Assistant,
    options: ServerOptions,
) -> std::io::Result<()> {
    axum::serve(listener, router(assistant, options)).await
}

/// An error response, ready to send.
pub(crate) type ApiError = Response;

fn error(
    status: StatusCode,
    kind: &str,
    code: &str,
    param: Option<&str>,
    message: impl Into<String>,
) -> Response {
    let body =
        json!({"error": {"message": message.into(), "type": kind, "code": code, "param": param}});
    (status, Json(body)).into_response()
}

pub(crate) fn bad_request(code: &str, param: &str, message: impl Into<String>) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        code,
        Some(param),
        message,
    )
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown_url",
        None,
        format!("no route {uri}; see GET /v1/models"),
    )
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        None,
        "method not allowed on this route",
    )
}

/// `param`: the request field the error is about, when it is one.
fn sdk_error(e: &SdkError, param: Option<&str>) -> Response {
    use arny_engine_api::EngineError as E;
    let status = match e {
        SdkError::InvalidRequest(_)
        | SdkError::Engine(E::InvalidInput(_) | E::ContextOverflow { .. })
        | SdkError::Engine(E::InvalidConstraint(_) | E::Template(_)) => StatusCode::BAD_REQUEST,
        SdkError::UnknownSpecialist { .. } => StatusCode::NOT_FOUND,
        SdkError::MemoryBudget { .. } | SdkError::QueueTimeout { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        SdkError::Cloud(_) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let kind = if status.is_client_error() {
        "invalid_request_error"
    } else {
        "server_error"
    };
    let param = match e {
        SdkError::Engine(E::InvalidConstraint(_)) => param,
        _ => None,
    };
    let mut resp = error(status, kind, e.code(), param, e.to_string());
    if matches!(e, SdkError::QueueTimeout { .. }) {
        // Running work ends; a retry later may find room.
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
    }
    resp
}

fn authorized(state: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let Some(key) = &state.options.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            None,
            "missing or wrong API key",
        ))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&state, &headers) {
        return r;
    }
    let data: Vec<Value> = std::iter::once(ROUTED_MODEL.to_string())
        .chain(state.assistant.specialist_names())
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "arny"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn status(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&state, &headers) {
        return r;
    }
    Json(state.assistant.status()).into_response()
}

const EMBEDDING_FIELDS: &[&str] = &["model", "input", "encoding_format", "dimensions"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingBody {
    model: String,
    input: Prompt,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

/// Embeddings from a specialist's model (`arny`: the first specialist's).
async fn embeddings(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body: EmbeddingBody = match accept(&state, &headers, body, EMBEDDING_FIELDS) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let specialist = match specialist_for(&state, &body.model) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return bad_request(
                "invalid_encoding_format",
                "encoding_format",
                format!("encoding_format `{other}` is not `float` or `base64`"),
            );
        }
    };
    let texts = match body.input {
        Prompt::One(t) => vec![t],
        Prompt::Many(v) => v,
    };
    if texts.is_empty() || texts.len() > 256 {
        return bad_request("invalid_input", "input", "input takes 1 to 256 strings");
    }
    let slot = match take_slot(&state).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let assistant = state.assistant.clone();
    let handle = tokio::runtime::Handle::current();
    let result = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        handle.block_on(assistant.embed(specialist.as_deref(), &texts))
    })
    .await;
    let e = match result {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => return sdk_error(&e, Some("input")),
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal",
                None,
                format!("embedding failed: {e}"),
            );
        }
    };
    let dim = e.vectors.first().map_or(0, Vec::len);
    // The model has one size; a request for another cannot be honoured.
    if let Some(d) = body.dimensions
        && d != dim
    {
        return bad_request(
            "unsupported_parameter",
            "dimensions",
            format!("this model's embeddings have {dim} dimensions, not {d}"),
        );
    }
    let data: Vec<Value> = e
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Json(json!({
        "object": "list", "data": data, "model": body.model,
        "usage": {"prompt_tokens": e.prompt_tokens, "total_tokens": e.prompt_tokens},
    }))
    .into_response()
}

/// An authorized request's body, parsed ([`parse_body`]).
fn accept<T: DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
    supported: &[&str],
) -> Result<T, Response> {
    authorized(state, headers)?;
    parse_body(body, supported)
}

/// Parses a JSON body into `T`, first checking every key against the
/// fields `T` supports, so that an unsupported one is refused by name (as
/// `param`) rather than lost.
fn parse_body<T: DeserializeOwned>(
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
    supported: &[&str],
) -> Result<T, Response> {
    let Json(mut v) = body.map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_body",
            None,
            e.body_text(),
        )
    })?;
    let Some(obj) = v.as_object_mut() else {
        return Err(bad_request(
            "invalid_body",
            "body",
            "the body must be a JSON object",
        ));
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !supported.contains(&k.as_str()) && !HARMLESS_FIELDS.contains(&k.as_str()))
    {
        return Err(bad_request(
            "unsupported_parameter",
            k,
            format!(
                "unsupported field `{k}`: this server honours {} (and ignores only {})",
                supported.join(", "),
                HARMLESS_FIELDS.join(", ")
            ),
        ));
    }
    for k in HARMLESS_FIELDS {
        obj.remove(*k);
    }
    serde_json::from_value(v).map_err(|e| bad_request("invalid_body", "body", e.to_string()))
}

const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatBody {
    model: String,
    messages: Vec<WireMessage>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    n: Option<u32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<u32>,
    response_format: Option<ResponseFormat>,
    #[serde(default)]
    tools: Vec<tools::Tool>,
    tool_choice: Option<Value>,
    /// One call per answer is generated; `true` (may call several) and
    /// `false` (at most one) both hold for that.
    #[allow(dead_code)]
    parallel_tool_calls: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSchemaFormat {
    #[allow(dead_code)]
    name: String,
    #[allow(dead_code)]
    description: Option<String>,
    schema: Option<Value>,
    /// Output is always held to the schema; `strict` cannot loosen that.
    #[allow(dead_code)]
    strict: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    fn list(stop: &Option<Stop>) -> Result<Vec<String>, Response> {
        let v = match stop {
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
            None => Vec::new(),
        };
        if v.len() > 4 || v.iter().any(String::is_empty) {
            return Err(bad_request(
                "invalid_stop",
                "stop",
                "stop takes at most 4 non-empty strings",
            ));
        }
        Ok(v)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Content,
    #[allow(dead_code)]
    name: Option<String>,
    #[serde(default)]
    tool_calls: Vec<Value>,
    tool_call_id: Option<String>,
    /// Set by clients replaying an assistant turn; refusals are text.
    #[allow(dead_code)]
    refusal: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Value>),
    #[default]
    Null,
}

impl Content {
    fn text(&self) -> Result<String, Response> {
        Ok(match self {
            Content::Text(s) => s.clone(),
            Content::Parts(parts) => {
                let mut out = String::new();
                for p in parts {
                    match p.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            out.push_str(p.get("text").and_then(Value::as_str).unwrap_or(""))
                        }
                        other => {
                            return Err(bad_request(
                                "unsupported_content",
                                "messages",
                                format!(
                                    "content part type {} is not supported; only text",
                                    other.unwrap_or("(none)")
                                ),
                            ));
                        }
                    }
                }
                out
            }
            Content::Null => String::new(),
        })
    }
}

/// Which model id names what: the gateway or one specialist.
fn specialist_for(state: &AppState, model: &str) -> Result<Option<String>, Response> {
    if model == ROUTED_MODEL || model == "auto" {
        Ok(None)
    } else if state
        .assistant
        .specialist_names()
        .iter()
        .any(|n| n == model)
    {
        Ok(Some(model.to_string()))
    } else {
        Err(error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            Some("model"),
            format!(
                "no model `{model}`; use `{ROUTED_MODEL}` or one of: {}",
                state.assistant.specialist_names().join(", ")
            ),
        ))
    }
}

/// The conversation as the specialist's model will see it. Tool calls and
/// results become text ([`tools`]); consecutive user turns are merged so
/// templates that require alternation accept them.
fn conversation(body: &ChatBody, tool_text: Option<&str>) -> Result<Vec<ChatMessage>, Response> {
    let mut out: Vec<ChatMessage> = Vec::new();
    for m in &body.messages {
        let (role, content) = match m.role.as_str() {
            "user" => (Role::User, m.content.text()?),
            "assistant" => {
                let mut text = m.content.text()?;
                if !m.tool_calls.is_empty() {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&tools::render_calls(&m.tool_calls));
                }
                (Role::Assistant, text)
            }
            "tool" => {
                // A result must answer a call made earlier in the
                // conversation; anything else is a malformed history.
                let id = m.tool_call_id.as_deref().unwrap_or("");
                let call = body
                    .messages
                    .iter()
                    .flat_map(|m| &m.tool_calls)
                    .find(|c| c.get("id").and_then(Value::as_str) == Some(id));
                let Some(call) = call else {
                    return Err(bad_request(
                        "invalid_tool_message",
                        "messages",
                        format!(
                            "a `tool` message must carry the tool_call_id of an earlier assistant tool call (got `{id}`)"
                        ),
                    ));
                };
                let name = call.get("function").and_then(|f| f.get("name")?.as_str());
                (
                    Role::User,
                    tools::render_result(Some(id), name, &m.content.text()?),
                )
            }
            // Each specialist has its own system prompt; a client's would be
            // dropped, so it is refused instead.
            "system" | "developer" => {
                return Err(bad_request(
                    "unsupported_role",
                    "messages",
                    format!(
                        "`{}` messages are not supported: each specialist has its own system prompt",
                        m.role
                    ),
                ));
            }
            other => {
                return Err(bad_request(
                    "invalid_role",
                    "messages",
                    format!("unsupported message role `{other}`"),
                ));
            }
        };
        match out.last_mut() {
            Some(last) if role == Role::User && last.role == Role::User => {
                last.content.push_str("\n\n");
                last.content.push_str(&content);
            }
            _ => out.push(ChatMessage { role, content }),
        }
    }
    if let (Some(extra), Some(last)) = (
        tool_text,
        out.iter_mut().rev().find(|m| m.role == Role::User),
    ) {
        last.content.push_str(extra);
    }
    Ok(out)
}

/// Sampling, limits and logprobs fields shared by both completion routes.
struct Common {
    specialist: Option<String>,
    max_tokens: Option<u32>,
    sampling: SamplingOverrides,
    stop: Vec<String>,
    n: u32,
    logprobs: bool,
    top_logprobs: u32,
}

impl Common {
    fn request(&self, messages: Vec<ChatMessage>, choice: u32) -> AskRequest {
        let mut r = AskRequest::new("");
        r.messages = messages;
        r.specialist = self.specialist.clone();
        r.max_tokens = self.max_tokens;
        r.stop = self.stop.clone();
        r.logprobs = self.logprobs;
        r.top_logprobs = self.top_logprobs;
        r.sampling = self.sampling.clone();
        // Choices differ by seed; the first keeps the one asked for, so
        // `n: 1` and `n: 3` agree on choice 0.
        if choice > 0 {
            let base = self.sampling.seed.unwrap_or(0);
            r.sampling.seed = Some(base.wrapping_add(u64::from(choice)));
        }
        r
    }
}

/// The sampling fields both completion routes share.
fn overrides(
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
) -> SamplingOverrides {
    SamplingOverrides {
        temperature,
        top_p,
        seed,
        presence_penalty,
        frequency_penalty,
        ..SamplingOverrides::default()
    }
}

fn check_n(n: Option<u32>) -> Result<u32, Response> {
    let n = n.unwrap_or(1);
    if n == 0 || n > MAX_CHOICES {
        return Err(bad_request(
            "invalid_n",
            "n",
            format!("n must be in 1..={MAX_CHOICES}"),
        ));
    }
    Ok(n)
}

/// What one chat request asks of the assistant.
struct ChatPlan {
    common: Common,
    messages: Vec<ChatMessage>,
    constraint: Option<Constraint>,
    /// `param` a constraint error is reported under.
    constraint_param: &'static str,
    /// Answers may be tool calls.
    tools: bool,
    include_usage: bool,
}

fn plan_chat(state: &AppState, body: &ChatBody) -> Result<ChatPlan, Response> {
    let specialist = specialist_for(state, &body.model)?;
    tools::check(&body.tools)?;
    let choice = tools::Choice::parse(body.tool_choice.as_ref(), !body.tools.is_empty())?;
    let format = match &body.response_format {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(Constraint::JsonObject),
        Some(ResponseFormat::JsonSchema { json_schema }) => match &json_schema.schema {
            Some(s) => Some(Constraint::JsonSchema(s.clone())),
            None => {
                return Err(bad_request(
                    "invalid_response_format",
                    "response_format",
                    "json_schema needs a `schema`",
                ));
            }
        },
    };
    let tool_constraint = tools::constraint(&body.tools, &choice)?;
    let (constraint, constraint_param) = match (format, tool_constraint) {
        (Some(_), Some(_)) => {
            return Err(bad_request(
                "unsupported_parameter",
                "response_format",
                "response_format together with tools is not supported: the answer is either a tool call or the format",
            ));
        }
        (Some(c), None) => (Some(c), "response_format"),
        (None, Some(c)) => (Some(c), "tools"),
        (None, None) => (None, "response_format"),
    };
    if body.logprobs && body.stream {
        return Err(bad_request(
            "unsupported_parameter",
            "logprobs",
            "logprobs are not streamed yet; ask without `stream`",
        ));
    }
    if body.top_logprobs.is_some() && !body.logprobs {
        return Err(bad_request(
            "invalid_top_logprobs",
            "top_logprobs",
            "top_logprobs needs logprobs: true",
        ));
    }
    if body.stream_options.is_some() && !body.stream {
        return Err(bad_request(
            "invalid_stream_options",
            "stream_options",
            "stream_options needs stream: true",
        ));
    }
    let tool_text = tools::instructions(&body.tools, &choice);
    Ok(ChatPlan {
        common: Common {
            specialist,
            max_tokens: body.max_completion_tokens.or(body.max_tokens),
            sampling: overrides(
                body.temperature,
                body.top_p,
                body.seed,
                body.presence_penalty,
                body.frequency_penalty,
            ),
            stop: Stop::list(&body.stop)?,
            n: check_n(body.n)?,
            logprobs: body.logprobs,
            top_logprobs: body.top_logprobs.unwrap_or(0),
        },
        messages: conversation(body, tool_text.as_deref())?,
        constraint,
        constraint_param,
        tools: choice != tools::Choice::None,
        include_usage: body
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
    })
}

fn finish_reason(a: &Answer) -> &'static str {
    match a.finish_reason {
        FinishReason::MaxTokens | FinishReason::ContextFull => "length",
        FinishReason::Eos | FinishReason::StopString | FinishReason::Cancelled => "stop",
    }
}

fn arny_extension(a: &Answer) -> Value {
    json!({
        "handler": a.handler,
        "decision": a.decision,
        "finish_reason": a.finish_reason,
        "incomplete": a.incomplete,
        "total_ms": a.total_ms,
    })
}

fn chat_logprobs(a: &Answer) -> Value {
    let entry = |t: &str, b: &[u8], lp: f32| json!({"token": t, "logprob": lp, "bytes": b});
    json!({
        "content": a.logprobs.iter().map(|l: &TokenLogprob| {
            let mut e = entry(&l.token, &l.bytes, l.logprob);
            e["top_logprobs"] = l.top.iter().map(|t| entry(&t.token, &t.bytes, t.logprob)).collect();
            e
        }).collect::<Vec<_>>(),
        "refusal": null,
    })
}

fn usage(answers: &[Answer]) -> Value {
    let (mut p, mut c) = (0, 0);
    for a in answers {
        if let Some(u) = &a.usage {
            // The prompt is the same for every choice: count it once.
            p = u.prompt_tokens;
            c += u.generated_tokens;
        }
    }
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

/// One chat choice: text, or a tool call when tools were offered and the
/// answer is one.
fn chat_choice(index: usize, a: &Answer, plan: &ChatPlan, reply: &Reply) -> Value {
    let call = if plan.tools && !a.incomplete {
        tools::parse_call(&a.text)
    } else {
        None
    };
    let (message, finish) = match call {
        Some(c) => (
            json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                {"id": reply.call_id(index), "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            ]}),
            "tool_calls",
        ),
        None => (
            json!({"role": "assistant", "content": a.text, "refusal": null}),
            finish_reason(a),
        ),
    };
    let logprobs = if plan.common.logprobs {
        chat_logprobs(a)
    } else {
        Value::Null
    };
    json!({"index": index, "message": message, "finish_reason": finish, "logprobs": logprobs})
}

async fn chat(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body: ChatBody = match accept(&state, &headers, body, CHAT_FIELDS) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let plan = match plan_chat(&state, &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let slot = match take_slot(&state).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let reply = Reply::new("chatcmpl", &body.model);
    if body.stream {
        stream_chat(state.assistant.clone(), plan, slot, reply)
    } else {
        let param = plan.constraint_param;
        let requests: Vec<AskRequest> = (0..plan.common.n)
            .map(|i| {
                let mut r = plan.common.request(plan.messages.clone(), i);
                r.constraint = plan.constraint.clone();
                r
            })
            .collect();
        match run_all(state.assistant.clone(), requests, slot).await {
            Ok(answers) => {
                let choices: Vec<Value> = answers
                    .iter()
                    .enumerate()
                    .map(|(i, a)| chat_choice(i, a, &plan, &reply))
                    .collect();
                Json(json!({
                    "id": reply.id, "object": "chat.completion", "created": now(), "model": reply.model,
                    "choices": choices, "usage": usage(&answers),
                    "system_fingerprint": null,
                    "arny": answers.first().map(arny_extension),
                }))
                .into_response()
            }
            Err(e) => sdk_error(&e, Some(param)),
        }
    }
}

const COMPLETION_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "stream",
    "stream_options",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "echo",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletionBody {
    model: String,
    prompt: Prompt,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    n: Option<u32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    /// The legacy API's form: how many alternatives per token (0-5).
    logprobs: Option<u32>,
    #[serde(default)]
    echo: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    One(String),
    Many(Vec<String>),
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body: CompletionBody = match accept(&state, &headers, body, COMPLETION_FIELDS) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let prompts = match &body.prompt {
        Prompt::One(p) => vec![p.clone()],
        Prompt::Many(v) => v.clone(),
    };
    let refuse = |param: &str, m: &str| Err(bad_request("unsupported_parameter", param, m));
    let checked: Result<Common, Response> = (|| {
        if body.echo {
            return refuse("echo", "echo is not supported");
        }
        if body.stream {
            return refuse(
                "stream",
                "streamed completions are not supported on /v1/completions; use /v1/chat/completions",
            );
        }
        if body.stream_options.is_some() {
            return refuse("stream_options", "stream_options needs stream");
        }
        if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) {
            return Err(bad_request(
                "invalid_prompt",
                "prompt",
                "prompt must be a non-empty string or list of them",
            ));
        }
        if body.logprobs.is_some_and(|n| n > 5) {
            return Err(bad_request(
                "invalid_logprobs",
                "logprobs",
                "logprobs is at most 5",
            ));
        }
        Ok(Common {
            specialist: specialist_for(&state, &body.model)?,
            max_tokens: Some(body.max_tokens.unwrap_or(16)),
            sampling: overrides(
                body.temperature,
                body.top_p,
                body.seed,
                body.presence_penalty,
                body.frequency_penalty,
            ),
            stop: Stop::list(&body.stop)?,
            n: check_n(body.n)?,
            logprobs: body.logprobs.is_some(),
            top_logprobs: body.logprobs.unwrap_or(0),
        })
    })();
    let common = match checked {
        Ok(c) => c,
        Err(r) => return r,
    };
    let slot = match take_slot(&state).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let reply = Reply::new("cmpl", &body.model);
    let mut requests = Vec::new();
    for p in &prompts {
        for i in 0..common.n {
            let mut r = common.request(vec![ChatMessage::user(p.clone())], i);
            r.raw = true;
            requests.push(r);
        }
    }
    match run_all(state.assistant.clone(), requests, slot).await {
        Ok(answers) => {
            let choices: Vec<Value> = answers
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let logprobs = if common.logprobs {
                        let mut offset = 0;
                        let offsets: Vec<usize> = a
                            .logprobs
                            .iter()
                            .map(|l| {
                                let o = offset;
                                offset += l.token.len();
                                o
                            })
                            .collect();
                        json!({
                            "tokens": a.logprobs.iter().map(|l| &l.token).collect::<Vec<_>>(),
                            "token_logprobs": a.logprobs.iter().map(|l| l.logprob).collect::<Vec<_>>(),
                            "top_logprobs": a.logprobs.iter().map(|l| {
                                l.top.iter().map(|t| (t.token.clone(), json!(t.logprob))).collect::<serde_json::Map<_, _>>()
                            }).collect::<Vec<_>>(),
                            "text_offset": offsets,
                        })
                    } else {
                        Value::Null
                    };
                    json!({"index": i, "text": a.text, "finish_reason": finish_reason(a), "logprobs": logprobs})
                })
                .collect();
            let prompt_tokens: usize = answers
                .iter()
                .step_by(common.n as usize)
                .filter_map(|a| a.usage.as_ref().map(|u| u.prompt_tokens))
                .sum();
            let completion_tokens: usize = answers
                .iter()
                .filter_map(|a| a.usage.as_ref().map(|u| u.generated_tokens))
                .sum();
            Json(json!({
                "id": reply.id, "object": "text_completion", "created": now(), "model": reply.model,
                "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
                "system_fingerprint": null,
            }))
            .into_response()
        }
        Err(e) => sdk_error(&e, None),
    }
}

/// 429 with `Retry-After`: every slot is taken and the queue is full.
fn busy() -> Response {
    let mut resp = error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        "busy",
        None,
        "every generation slot is taken and the queue is full; retry shortly",
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    resp
}

/// The id and model name every chunk of one reply carries.
#[derive(Clone)]
struct Reply {
    id: String,
    model: String,
}

impl Reply {
    fn new(prefix: &str, model: &str) -> Self {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            id: format!("{prefix}-arny-{}-{n}", now()),
            model: model.to_string(),
        }
    }

    fn call_id(&self, choice: usize) -> String {
        format!("call_{}_{choice}", self.id.replace('-', "_"))
    }

    fn chunk(&self, index: usize, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": now(), "model": self.model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": null}],
        })
    }
}

/// Runs requests one after another on the blocking pool.
async fn run_all(
    assistant: Assistant,
    requests: Vec<AskRequest>,
    slot: OwnedSlot,
) -> Result<Vec<Answer>, SdkError> {
    let handle = tokio::runtime::Handle::current();
    let joined = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut answers = Vec::with_capacity(requests.len());
        for r in requests {
            answers.push(handle.block_on(assistant.ask(r, |_| {}))?);
        }
        Ok(answers)
    })
    .await;
    joined.unwrap_or_else(|e| Err(SdkError::InvalidRequest(format!("generation failed: {e}"))))
}

/// The answer as server-sent events: per choice a role chunk, one chunk
/// per piece (or, for a tool call, the call once it is complete) and a
/// chunk with the finish reason; then the usage chunk if asked for, then
/// `[DONE]`. A client that goes away cancels the generation.
fn stream_chat(assistant: Assistant, plan: ChatPlan, slot: OwnedSlot, reply: Reply) -> Response {
    let (tx, rx) = mpsc::unbounded_channel::<Value>();
    let handle = tokio::runtime::Handle::current();
    // A client that leaves while the request still waits for memory sends
    // no failed piece to notice it by: watch the channel itself.
    // The watcher's sender must go when the generation ends, or the stream
    // would never see its end.
    let gone = CancelToken::new();
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    {
        let (tx, gone) = (tx.clone(), gone.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tx.closed() => gone.cancel(),
                _ = finished => {}
            }
        });
    }
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let _done = done;
        let mut answers = Vec::new();
        for i in 0..plan.common.n {
            let index = i as usize;
            let mut request = plan.common.request(plan.messages.clone(), i);
            request.constraint = plan.constraint.clone();
            request.cancel = gone.clone();
            let cancel: CancelToken = request.cancel.clone();
            let _ = tx.send(reply.chunk(index, json!({"role": "assistant", "content": ""}), None));
            let (tx2, reply2) = (tx.clone(), reply.clone());
            // With tools on, text is held until the first character shows
            // whether the answer is a call (`{`) or prose.
            let mut held = String::new();
            let mut is_call = None;
            let tools_on = plan.tools;
            let result = handle.block_on(assistant.ask(request, move |piece| {
                let out = if tools_on {
                    held.push_str(piece);
                    match is_call {
                        None if held.trim_start().is_empty() => return,
                        None => {
                            let call = held.trim_start().starts_with('{');
                            is_call = Some(call);
                            if call {
                                return;
                            }
                            std::mem::take(&mut held)
                        }
                        Some(true) => return,
                        Some(false) => std::mem::take(&mut held),
                    }
                } else {
                    piece.to_string()
                };
                if tx2
                    .send(reply2.chunk(index, json!({"content": out}), None))
                    .is_err()
                {
                    // The client went away.
                    cancel.cancel();
                }
            }));
            match result {
                Ok(a) => {
                    let call = if plan.tools && !a.incomplete {
                        tools::parse_call(&a.text)
                    } else {
                        None
                    };
                    let finish = match &call {
                        Some(c) => {
                            let id = reply.call_id(index);
                            let _ = tx.send(reply.chunk(index, json!({"tool_calls": [
                                {"index": 0, "id": id, "type": "function", "function": {"name": c.name, "arguments": ""}}
                            ]}), None));
                            let _ = tx.send(reply.chunk(
                                index,
                                json!({"tool_calls": [
                                    {"index": 0, "function": {"arguments": c.arguments}}
                                ]}),
                                None,
                            ));
                            "tool_calls"
                        }
                        None => {
                            // A call-shaped answer that did not complete
                            // goes out as text.
                            if plan.tools && a.text.trim_start().starts_with('{') {
                                let _ =
                                    tx.send(reply.chunk(index, json!({"content": a.text}), None));
                            }
                            finish_reason(&a)
                        }
                    };
                    let mut last = reply.chunk(index, json!({}), Some(finish));
                    last["arny"] = arny_extension(&a);
                    let _ = tx.send(last);
                    answers.push(a);
                }
                Err(e) => {
                    let _ = tx.send(json!({"error": {"message": e.to_string(), "type": "server_error", "code": e.code(), "param": null}}));
                    return;
                }
            }
        }
        if plan.include_usage {
            let _ = tx.send(json!({
                "id": reply.id, "object": "chat.completion.chunk", "created": now(), "model": reply.model,
                "choices": [], "usage": usage(&answers),
            }));
        }
    });
    let events = tokio_stream(rx)
        .map(|v| Ok::<_, Infallible>(SseEvent::default().data(v.to_string())))
        .chain(futures::stream::once(async {
            Ok(SseEvent::default().data("[DONE]"))
        }));
    Sse::new(events).into_response()
}

fn tokio_stream<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A semaphore permit that does not borrow the state: the state is kept
/// alive by an `Arc` inside.
struct OwnedSlot {
    _state: Arc<AppState>,
}

impl Drop for OwnedSlot {
    fn drop(&mut self) {
        self._state.slots.add_permits(1);
    }
}

/// A generation slot that lives as long as the generation, which may
/// outlive the handler when streaming. Waits in turn for one; fails with
/// 429 when the queue is full and 503 past the queue timeout.
async fn take_slot(state: &Arc<AppState>) -> Result<OwnedSlot, Response> {
    let permit = match state.slots.try_acquire() {
        Ok(p) => p,
        Err(_) => {
            if state.queued.fetch_add(1, Ordering::AcqRel) >= state.options.max_queue {
                state.queued.fetch_sub(1, Ordering::AcqRel);
                return Err(busy());
            }
            // Counted out however the wait ends (the client may go away,
            // dropping this future).
            struct Queued<'a>(&'a AtomicUsize);
            impl Drop for Queued<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::AcqRel);
                }
            }
            let _queued = Queued(&state.queued);
            let waited = tokio::time::timeout(state.queue_timeout, state.slots.acquire()).await;
            match waited {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => unreachable!("the semaphore is never closed"),
                Err(_) => {
                    let e = SdkError::QueueTimeout {
                        model: "a generation slot".into(),
                        waited_ms: state.queue_timeout.as_millis() as u64,
                        reason: format!("{} generations at once", state.options.max_concurrent),
                    };
                    return Err(sdk_error(&e, None));
                }
            }
        }
    };
    // Given back by hand (`OwnedSlot::drop`) when the generation ends.
    permit.forget();
    Ok(OwnedSlot {
        _state: state.clone(),
    })
}
