//! The client against small loopback servers that misbehave on purpose
//! (the happy path against the real `arny serve` is in the sdk's tests).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arny_cloud::{ChatRequest, CloudClient, CloudConfig, CloudError, Message};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;

async fn spawn(app: Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    url
}

fn request() -> ChatRequest {
    ChatRequest {
        messages: vec![Message::new("user", "hi")],
        ..Default::default()
    }
}

const OK_BODY: &str = r#"{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;

#[tokio::test]
async fn a_429_with_retry_after_is_retried_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [(header::RETRY_AFTER, "1")],
                        r#"{"error":{"message":"slow down"}}"#,
                    )
                        .into_response()
                } else {
                    ([(header::CONTENT_TYPE, "application/json")], OK_BODY).into_response()
                }
            }
        }),
    );
    let client = CloudClient::new(CloudConfig::new(spawn(app).await, "m")).unwrap();
    let t = Instant::now();
    let out = client.chat(&request()).await.unwrap();
    assert_eq!(out.text, "hello");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "waited as asked: {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_second_429_is_an_error_carrying_retry_after() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move || {
            c.fetch_add(1, Ordering::SeqCst);
            async {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, "0")],
                    r#"{"error":{"message":"quota"}}"#,
                )
                    .into_response()
            }
        }),
    );
    let client = CloudClient::new(CloudConfig::new(spawn(app).await, "m")).unwrap();
    match client.chat(&request()).await {
        Err(CloudError::RateLimited {
            retry_after,
            message,
        }) => {
            assert_eq!(retry_after, Some(Duration::ZERO));
            assert_eq!(message, "quota");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "retried exactly once");
}

#[tokio::test]
async fn status_errors_unreachable_and_timeouts_are_typed() {
    let app = Router::new()
        .route(
            "/a/v1/chat/completions",
            post(|| async {
                (
                    StatusCode::UNAUTHORIZED,
                    r#"{"error":{"message":"bad key"}}"#,
                )
            }),
        )
        .route(
            "/b/v1/chat/completions",
            post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route(
            "/c/v1/chat/completions",
            post(|| async { ([(header::CONTENT_TYPE, "application/json")], "{not json") }),
        )
        .route(
            "/d/v1/chat/completions",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
    let base = spawn(app).await.trim_end_matches("/v1").to_string();
    let client = |p: &str| {
        let mut cfg = CloudConfig::new(format!("{base}/{p}/v1"), "m");
        cfg.timeout = Duration::from_millis(300);
        CloudClient::new(cfg).unwrap()
    };
    assert!(
        matches!(client("a").chat(&request()).await, Err(CloudError::Unauthorized(m)) if m == "bad key")
    );
    assert!(matches!(
        client("b").chat(&request()).await,
        Err(CloudError::Status { status: 500, .. })
    ));
    assert!(matches!(
        client("c").chat(&request()).await,
        Err(CloudError::Protocol(_))
    ));
    let e = client("d").chat(&request()).await.unwrap_err();
    assert_eq!(e.code(), "cloud_timeout", "{e}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead =
        CloudClient::new(CloudConfig::new(format!("http://127.0.0.1:{port}/v1"), "m")).unwrap();
    let e = dead.chat(&request()).await.unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    assert!(CloudClient::new(CloudConfig::new("ftp://x", "m")).is_err());
}

#[tokio::test]
async fn a_stream_cut_short_is_an_error_not_a_short_answer() {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            let body = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hel\"}}]}\n\n";
            ([(header::CONTENT_TYPE, "text/event-stream")], body)
        }),
    );
    let client = CloudClient::new(CloudConfig::new(spawn(app).await, "m")).unwrap();
    let mut got = String::new();
    let e = client
        .chat_stream(&request(), &|| false, &mut |d| got.push_str(d))
        .await
        .unwrap_err();
    assert!(matches!(e, CloudError::Protocol(_)), "{e}");
    assert_eq!(got, "hel");
}
