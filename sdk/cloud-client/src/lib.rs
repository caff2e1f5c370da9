//! A small client for OpenAI-compatible chat-completions APIs: the cloud
//! fallback of Arny's gateway, and the test client of `arny serve`.
//!
//! Streaming uses server-sent events. Failures are typed so the caller can
//! decide what to do: an unreachable server may be answered locally, a
//! rejected key may not. A 429 with `Retry-After` is retried once, after
//! the time the server asked for (up to [`CloudConfig::max_retry_wait`]).

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("cloud endpoint unreachable: {0}")]
    Unreachable(String),
    #[error("cloud request timed out after {0:?}")]
    Timeout(Duration),
    #[error("cloud endpoint rejected the API key (HTTP 401): {0}")]
    Unauthorized(String),
    #[error("cloud endpoint is rate limiting (HTTP 429){}: {message}", retry_after.map(|d| format!(", retry after {d:?}")).unwrap_or_default())]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    #[error("cloud endpoint answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("cloud endpoint sent something unexpected: {0}")]
    Protocol(String),
    #[error("cloud configuration: {0}")]
    Config(String),
    #[error("cancelled")]
    Cancelled,
}

impl CloudError {
    /// Stable short code, for bindings and JSON.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "cloud_unreachable",
            Self::Timeout(_) => "cloud_timeout",
            Self::Unauthorized(_) => "cloud_unauthorized",
            Self::RateLimited { .. } => "cloud_rate_limited",
            Self::Status { .. } => "cloud_status",
            Self::Protocol(_) => "cloud_protocol",
            Self::Config(_) => "cloud_config",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether no answer could have come from the server at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::Timeout(_))
    }
}

#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// API root, e.g. `https://api.example.com/v1` (`/chat/completions` is
    /// appended).
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// Whole-request limit; for streams, the limit between two chunks.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Longest `Retry-After` that is waited out; longer ones fail at once.
    pub max_retry_wait: Duration,
}

impl CloudConfig {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            max_retry_wait: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub stop: Vec<String>,
}

/// A finished answer.
#[derive(Debug, Clone, Default)]
pub struct CloudCompletion {
    pub text: String,
    pub finish_reason: Option<String>,
    /// The model the server says answered.
    pub model: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: &'a [Message],
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
}

#[derive(Deserialize)]
struct WireResponse {
    model: Option<String>,
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
}
#[derive(Deserialize)]
struct WireChoice {
    message: Option<Message>,
    delta: Option<WireDelta>,
    finish_reason: Option<String>,
}
#[derive(Deserialize)]
struct WireDelta {
    content: Option<String>,
}
#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

pub struct CloudClient {
    http: reqwest::Client,
    config: CloudConfig,
}

impl CloudClient {
    pub fn new(config: CloudConfig) -> Result<Self, CloudError> {
        if !(config.base_url.starts_with("http://") || config.base_url.starts_with("https://")) {
            return Err(CloudError::Config(format!(
                "`{}` is not an http(s) URL",
                config.base_url
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.timeout)
            .build()
            .map_err(|e| CloudError::Config(e.to_string()))?;
        Ok(Self { http, config })
    }

    pub fn config(&self) -> &CloudConfig {
        &self.config
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.config.base_url.trim_end_matches('/'))
    }

    async fn send(&self, body: &WireRequest<'_>) -> Result<reqwest::Response, CloudError> {
        let mut retried = false;
        loop {
            let mut req = self.http.post(self.url("chat/completions")).json(body);
            if !body.stream {
                req = req.timeout(self.config.timeout);
            }
            if let Some(key) = &self.config.api_key {
                req = req.bearer_auth(key);
            }
            let resp = req.send().await.map_err(|e| self.transport(e))?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64);
            let message = error_message(resp).await;
            match status.as_u16() {
                401 | 403 => return Err(CloudError::Unauthorized(message)),
                429 => match retry_after {
                    Some(wait) if !retried && wait <= self.config.max_retry_wait => {
                        tracing::info!(?wait, "cloud endpoint asked to retry later; waiting once");
                        tokio::time::sleep(wait).await;
                        retried = true;
                    }
                    _ => {
                        return Err(CloudError::RateLimited {
                            retry_after,
                            message,
                        });
                    }
                },
                s => return Err(CloudError::Status { status: s, message }),
            }
        }
    }

    fn transport(&self, e: reqwest::Error) -> CloudError {
        if e.is_timeout() {
            CloudError::Timeout(self.config.timeout)
        } else if e.is_connect() || e.is_request() {
            CloudError::Unreachable(format!("{}: {}", self.config.base_url, source_chain(&e)))
        } else {
            CloudError::Protocol(source_chain(&e))
        }
    }

    /// One non-streamed answer.
    pub async fn chat(&self, request: &ChatRequest) -> Result<CloudCompletion, CloudError> {
        let body = self.wire(request, false);
        let resp = self.send(&body).await?;
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        let wire: WireResponse = serde_json::from_slice(&bytes)
            .map_err(|e| CloudError::Protocol(format!("bad JSON in the answer: {e}")))?;
        let choice = wire
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| CloudError::Protocol("the answer has no choices".into()))?;
        Ok(CloudCompletion {
            text: choice.message.map(|m| m.content).unwrap_or_default(),
            finish_reason: choice.finish_reason,
            model: wire.model,
            prompt_tokens: wire.usage.as_ref().and_then(|u| u.prompt_tokens),
            completion_tokens: wire.usage.as_ref().and_then(|u| u.completion_tokens),
        })
    }

    /// A streamed answer: `on_delta` gets each piece of text as it arrives.
    /// `cancelled` is checked between pieces; when it says yes, the stream
    /// is dropped (closing the connection) and `Cancelled` returned.
    pub async fn chat_stream(
        &self,
        request: &ChatRequest,
        cancelled: &(dyn Fn() -> bool + Send + Sync),
        on_delta: &mut (dyn FnMut(&str) + Send),
    ) -> Result<CloudCompletion, CloudError> {
        let body = self.wire(request, true);
        let resp = self.send(&body).await?;
        let mut events = resp.bytes_stream().eventsource();
        let mut out = CloudCompletion::default();
        let mut done = false;
        while let Some(ev) = events.next().await {
            if cancelled() {
                return Err(CloudError::Cancelled);
            }
            let ev = ev.map_err(|e| match e {
                eventsource_stream::EventStreamError::Transport(t) => self.transport(t),
                other => CloudError::Protocol(other.to_string()),
            })?;
            let data = ev.data.trim();
            if data == "[DONE]" {
                done = true;
                break;
            }
            if data.is_empty() {
                continue;
            }
            let chunk: WireResponse = serde_json::from_str(data)
                .map_err(|e| CloudError::Protocol(format!("bad JSON in a stream chunk: {e}")))?;
            if out.model.is_none() {
                out.model = chunk.model;
            }
            if let Some(u) = chunk.usage {
                out.prompt_tokens = u.prompt_tokens;
                out.completion_tokens = u.completion_tokens;
            }
            for c in chunk.choices {
                if let Some(text) = c.delta.and_then(|d| d.content)
                    && !text.is_empty()
                {
                    on_delta(&text);
                    out.text.push_str(&text);
                }
                if c.finish_reason.is_some() {
                    out.finish_reason = c.finish_reason;
                }
            }
        }
        if !done && out.finish_reason.is_none() {
            return Err(CloudError::Protocol(
                "the stream ended before the answer was complete".into(),
            ));
        }
        Ok(out)
    }

    /// The model ids the server offers (`GET /models`).
    pub async fn models(&self) -> Result<Vec<String>, CloudError> {
        #[derive(Deserialize)]
        struct List {
            data: Vec<Item>,
        }
        #[derive(Deserialize)]
        struct Item {
            id: String,
        }
        let mut req = self
            .http
            .get(self.url("models"))
            .timeout(self.config.timeout);
        if let Some(key) = &self.config.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            return Err(CloudError::Unauthorized(error_message(resp).await));
        }
        if status != 200 {
            return Err(CloudError::Status {
                status,
                message: error_message(resp).await,
            });
        }
        let list: List = resp
            .json()
            .await
            .map_err(|e| CloudError::Protocol(format!("bad model list: {e}")))?;
        Ok(list.data.into_iter().map(|i| i.id).collect())
    }

    fn wire<'a>(&'a self, r: &'a ChatRequest, stream: bool) -> WireRequest<'a> {
        WireRequest {
            model: &self.config.model,
            messages: &r.messages,
            stream,
            max_tokens: r.max_tokens,
            temperature: r.temperature,
            stop: &r.stop,
        }
    }
}

/// The server's own words: `error.message` of an OpenAI-style error body,
/// else the body's first 200 characters.
async fn error_message(resp: reqwest::Response) -> String {
    let text = resp.text().await.unwrap_or_default();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(m) = v.pointer("/error/message").and_then(|m| m.as_str())
    {
        return m.to_string();
    }
    text.chars().take(200).collect()
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
