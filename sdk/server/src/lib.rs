//! Serves an [`Assistant`] on loopback as an OpenAI-compatible API, so any
//! OpenAI client library (or the SDK's own cloud client on another device)
//! can talk to it.
//!
//! - `GET /v1/models`: `arny` (routed by the gateway) and one model per
//!   specialist (skips the gateway).
//! - `POST /v1/chat/completions`: streamed (SSE) or not. The specialist's
//!   system prompt is used; system messages from the client are ignored.
//!   Answers carry an extra `arny` object: who answered and why.
//! - `GET /v1/status`: loaded models, bytes, budget (Arny's own).
//!
//! Generation runs on tokio's blocking pool, one request per thread; a
//! client that disconnects mid-stream cancels its generation.

// Handlers return a ready `Response` as their error: that is axum's idiom,
// and the error path is cold, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arny_sdk::{
    Answer, AskOptions, AskRequest, Assistant, CancelToken, ChatMessage, FinishReason, Role,
    SdkError,
};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

/// The model id that lets the gateway choose.
pub const ROUTED_MODEL: &str = "arny";

#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// When set, requests need `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Generations at once; more get HTTP 429 with `Retry-After`.
    pub max_concurrent: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            api_key: None,
            max_concurrent: 4,
        }
    }
}

struct AppState {
    assistant: Assistant,
    options: ServerOptions,
    slots: Semaphore,
}

pub fn router(assistant: Assistant, options: ServerOptions) -> Router {
    let state = Arc::new(AppState {
        slots: Semaphore::new(options.max_concurrent.max(1)),
        assistant,
        options,
    });
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/status", get(status))
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

fn error(status: StatusCode, kind: &str, code: &str, message: impl Into<String>) -> Response {
    let body =
        json!({"error": {"message": message.into(), "type": kind, "code": code, "param": null}});
    (status, Json(body)).into_response()
}

fn sdk_error(e: &SdkError) -> Response {
    let status = match e {
        SdkError::InvalidRequest(_)
        | SdkError::Engine(arny_engine_api::EngineError::InvalidInput(_)) => {
            StatusCode::BAD_REQUEST
        }
        SdkError::Engine(arny_engine_api::EngineError::ContextOverflow { .. }) => {
            StatusCode::BAD_REQUEST
        }
        SdkError::UnknownSpecialist { .. } => StatusCode::NOT_FOUND,
        SdkError::MemoryBudget { .. } => StatusCode::SERVICE_UNAVAILABLE,
        SdkError::Cloud(_) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let kind = if status.is_client_error() {
        "invalid_request_error"
    } else {
        "server_error"
    };
    error(status, kind, e.code(), e.to_string())
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

// Unknown fields (`n`, `tools`, `response_format`, penalties, ...) are a 400
// naming the field: a request option is honoured or refused, never dropped.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatBody {
    model: String,
    messages: Vec<WireMessage>,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct WireMessage {
    role: String,
    content: Content,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Value>),
    Null(()),
}

impl Content {
    fn text(&self) -> String {
        match self {
            Content::Text(s) => s.clone(),
            Content::Parts(p) => p
                .iter()
                .filter_map(|v| v.get("text").and_then(|t| t.as_str()))
                .collect::<Vec<_>>()
                .join(""),
            Content::Null(()) => String::new(),
        }
    }
}

fn to_request(state: &AppState, body: &ChatBody) -> Result<AskRequest, Response> {
    let mut messages = Vec::new();
    for m in &body.messages {
        let role = match m.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            // Each specialist has its own system prompt; a client's would be
            // dropped, so it is refused instead.
            "system" | "developer" => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "unsupported_role",
                    format!(
                        "`{}` messages are not supported: each specialist has its own system prompt",
                        m.role
                    ),
                ));
            }
            other => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_role",
                    format!("unsupported message role `{other}`"),
                ));
            }
        };
        messages.push(ChatMessage {
            role,
            content: m.content.text(),
        });
    }
    let specialist = if body.model == ROUTED_MODEL || body.model == "auto" {
        None
    } else if state.assistant.specialist_names().contains(&body.model) {
        Some(body.model.clone())
    } else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!(
                "no model `{}`; use `{ROUTED_MODEL}` or one of: {}",
                body.model,
                state.assistant.specialist_names().join(", ")
            ),
        ));
    };
    let options = AskOptions {
        specialist,
        max_tokens: body.max_completion_tokens.or(body.max_tokens),
        temperature: body.temperature,
        top_p: body.top_p,
        seed: body.seed,
        stop: match &body.stop {
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
            None => Vec::new(),
        },
        ..AskOptions::default()
    };
    let mut req = AskRequest::new("");
    options.apply(&mut req);
    req.messages = messages;
    Ok(req)
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
        "total_ms": a.total_ms,
    })
}

async fn chat(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<ChatBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(r) = authorized(&state, &headers) {
        return r;
    }
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_body",
                e.body_text(),
            );
        }
    };
    let request = match to_request(&state, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let Some(slot) = take_slot(&state) else {
        return busy();
    };
    let reply = Reply::new(&body.model);
    if body.stream {
        stream(state.assistant.clone(), request, slot, reply)
    } else {
        complete(state.assistant.clone(), request, slot, reply).await
    }
}

/// 429 with `Retry-After`: every generation slot is taken.
fn busy() -> Response {
    let mut resp = error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        "busy",
        "all generation slots are busy; retry shortly",
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
    fn new(model: &str) -> Self {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            id: format!("chatcmpl-arny-{}-{n}", now()),
            model: model.to_string(),
        }
    }

    fn completion(&self, a: &Answer) -> Value {
        let usage = a.usage.as_ref();
        let (p, c) = (
            usage.map(|u| u.prompt_tokens).unwrap_or(0),
            usage.map(|u| u.generated_tokens).unwrap_or(0),
        );
        json!({
            "id": self.id, "object": "chat.completion", "created": now(), "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": a.text}, "finish_reason": finish_reason(a), "logprobs": null}],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
            "arny": arny_extension(a),
        })
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, extra: Option<Value>) -> Value {
        let mut v = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": now(), "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        });
        if let Some(e) = extra {
            v["arny"] = e;
        }
        v
    }
}

/// A whole answer as one JSON body. Generation runs on the blocking pool.
async fn complete(
    assistant: Assistant,
    request: AskRequest,
    slot: OwnedSlot,
    reply: Reply,
) -> Response {
    let handle = tokio::runtime::Handle::current();
    let joined = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        handle.block_on(assistant.ask(request, |_| {}))
    })
    .await;
    match joined {
        Ok(Ok(a)) => Json(reply.completion(&a)).into_response(),
        Ok(Err(e)) => sdk_error(&e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal",
            format!("generation failed: {e}"),
        ),
    }
}

/// The answer as server-sent events: a role chunk, one chunk per piece,
/// a final chunk with the finish reason, `[DONE]`. A client that goes away
/// cancels the generation.
fn stream(assistant: Assistant, request: AskRequest, slot: OwnedSlot, reply: Reply) -> Response {
    let (tx, rx) = mpsc::unbounded_channel::<Value>();
    let handle = tokio::runtime::Handle::current();
    let cancel: CancelToken = request.cancel.clone();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let _ = tx.send(reply.chunk(json!({"role": "assistant", "content": ""}), None, None));
        let (tx2, reply2) = (tx.clone(), reply.clone());
        let result = handle.block_on(assistant.ask(request, move |piece| {
            if tx2
                .send(reply2.chunk(json!({"content": piece}), None, None))
                .is_err()
            {
                // The client went away.
                cancel.cancel();
            }
        }));
        let last = match result {
            Ok(a) => reply.chunk(json!({}), Some(finish_reason(&a)), Some(arny_extension(&a))),
            Err(e) => {
                json!({"error": {"message": e.to_string(), "type": "server_error", "code": e.code()}})
            }
        };
        let _ = tx.send(last);
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
/// outlive the handler when streaming; `None` when all are taken.
fn take_slot(state: &Arc<AppState>) -> Option<OwnedSlot> {
    let permit = state.slots.try_acquire().ok()?;
    // Given back by hand (`OwnedSlot::drop`) when the generation ends.
    permit.forget();
    Some(OwnedSlot {
        _state: state.clone(),
    })
}
