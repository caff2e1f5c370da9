//! `arny serve`'s API, checked with the official `openai` Python package
//! (installed by scripts/setup.sh into ~/.cache/arny/venv) and by hand.

use std::path::PathBuf;
use std::process::Command;

use arny_sdk::{Assistant, AssistantOptions, Manifest};
use arny_server::ServerOptions;

const MANIFEST: &str = r#"
plan = "universal"

[[models]]
id = "m"
engine = "gguf"
path = "m.gguf"
context_length = 1024

[[specialists]]
name = "math"
model = "m"
system_prompt = "You are a precise mathematics tutor."
examples = ["What is 3 + 4?", "Solve 2x = 10", "What is 20% of 50?", "Compute 9 times 8"]

[[specialists]]
name = "wellness"
model = "m"
system_prompt = "You are a kind wellness counselor."
examples = ["I feel sad today", "How do I handle stress?", "I'm anxious about work", "I can't sleep because I worry"]

[[specialists]]
name = "logistics"
model = "m"
system_prompt = "You are a practical logistics planner."
examples = ["Plan my errands for Saturday", "Schedule my week", "Make a packing list for a trip", "Organize a move to a new flat"]
"#;

async fn start(api_key: Option<&str>) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let model =
        arny_model_store::require_default_model().expect("the default model; run scripts/setup.sh");
    std::fs::hard_link(&model, dir.path().join("m.gguf"))
        .or_else(|_| std::fs::copy(&model, dir.path().join("m.gguf")).map(|_| ()))
        .unwrap();
    let m = Manifest::parse(MANIFEST, "server test", dir.path()).unwrap();
    let a = Assistant::new(
        m,
        AssistantOptions {
            fetch_missing: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    let opts = ServerOptions {
        api_key: api_key.map(str::to_string),
        max_concurrent: 2,
        ..Default::default()
    };
    tokio::spawn(arny_server::serve(l, a, opts));
    (url, dir)
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("ARNY_TEST_PYTHON") {
        return p.into();
    }
    if let Some(v) = std::env::var_os("ARNY_VENV") {
        return PathBuf::from(v).join("bin/python");
    }
    let home = std::env::var_os("HOME").expect("HOME");
    PathBuf::from(home).join(".cache/arny/venv/bin/python")
}

/// Runs a client program to the end off the async threads; returns its
/// stdout, failing the test (with both streams) unless it succeeded.
async fn run_client(mut cmd: Command) -> String {
    let what = format!("{cmd:?}");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{what} failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_official_openai_python_client_works_against_it() {
    let (url, _dir) = start(Some("test-key")).await;
    let py = python();
    assert!(
        py.exists(),
        "{} is missing: scripts/setup.sh installs the `openai` package there (or set ARNY_TEST_PYTHON)",
        py.display()
    );
    let mut cmd = Command::new(py);
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/openai_client.py"
    ))
    .args([url.as_str(), "test-key"]);
    assert!(run_client(cmd).await.starts_with("OK"));
}

/// The same from JavaScript: the official `openai` npm package
/// (installed by scripts/setup.sh into tests/npm/node_modules).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_official_openai_npm_client_works_against_it() {
    let (url, _dir) = start(Some("test-key")).await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/npm");
    assert!(
        std::path::Path::new(dir)
            .join("node_modules/openai")
            .exists(),
        "{dir}/node_modules is missing: scripts/setup.sh --with test installs the `openai` npm package"
    );
    let mut cmd = Command::new("node");
    cmd.current_dir(dir)
        .args(["openai_client.mjs", url.as_str(), "test-key"]);
    assert!(run_client(cmd).await.starts_with("OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_openai_style_errors() {
    let (url, _dir) = start(None).await;
    let (status, body) = http(&url, "POST", "/chat/completions", "{\"model\": \"arny\"}").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let (status, body) = http(
        &url,
        "POST",
        "/chat/completions",
        r#"{"model":"arny","messages":[{"role":"tool","content":"x"}]}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = http(
        &url,
        "POST",
        "/chat/completions",
        r#"{"model":"arny","messages":[{"role":"assistant","content":"only me"}]}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_request"), "{body}");
    // Options the server does not support are refused by name.
    let (status, body) = http(
        &url,
        "POST",
        "/chat/completions",
        r#"{"model":"arny","mirostat":2,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["param"], "mirostat", "{body}");
    assert_eq!(v["error"]["code"], "unsupported_parameter", "{body}");
    // `user` is documented as harmless and accepted.
    let (status, body) = http(
        &url,
        "POST",
        "/chat/completions",
        r#"{"model":"math","user":"u1","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for (bad, param) in [
        (r#""n":9"#, "n"),
        (r#""stream":true,"logprobs":true"#, "logprobs"),
        (r#""top_logprobs":2"#, "top_logprobs"),
        (r#""tool_choice":"required""#, "tool_choice"),
        (
            r#""response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","uniqueItems":true,"not":{}}}}"#,
            "response_format",
        ),
    ] {
        let body =
            format!(r#"{{"model":"math",{bad},"messages":[{{"role":"user","content":"hi"}}]}}"#);
        let (status, out) = http(&url, "POST", "/chat/completions", &body).await;
        assert_eq!(status, 400, "{bad}: {out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["error"]["param"], param, "{bad}: {out}");
        assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string());
    }
    // Every error, even for a route that does not exist, is OpenAI-shaped.
    for (method, path, body, want) in [
        ("GET", "/nothing", "", 404),
        ("GET", "/chat/completions", "", 405),
        ("POST", "/embeddings", r#"{"model":"math","input":""}"#, 400),
        (
            "POST",
            "/embeddings",
            r#"{"model":"math","input":"x","dimensions":3}"#,
            400,
        ),
        (
            "POST",
            "/embeddings",
            r#"{"model":"astrology","input":"x"}"#,
            404,
        ),
    ] {
        let (status, out) = http(&url, method, path, body).await;
        assert_eq!(status, want, "{path}: {out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(v["error"]["code"].is_string(), "{path}: {out}");
    }
    let (status, body) = http(
        &url,
        "POST",
        "/chat/completions",
        r#"{"model":"arny","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("`system` messages are not supported"),
        "{body}"
    );
    let (status, body) = http(&url, "GET", "/status", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"plan\":\"universal\""), "{body}");
}

/// Structured output on a corpus of real-world JSON Schemas: every answer
/// returned as a success validates with the `jsonschema` package; every
/// refusal is a typed 400. The script writes its report next to the build.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_world_schemas_are_enforced_or_refused() {
    let (url, _dir) = start(None).await;
    let py = python();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests");
    let report = std::env::temp_dir().join("arny-schema-corpus.json");
    let mut cmd = Command::new(py);
    cmd.arg(format!("{dir}/schema_corpus.py"))
        .args([url.as_str(), "none", "math", &format!("{dir}/schemas")])
        .arg(&report);
    let stdout = run_client(cmd).await;
    eprintln!("{stdout}(report: {})", report.display());
}

/// A minimal HTTP/1.1 exchange over a TcpStream, enough for error checks.
async fn http(base: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hostport = base.trim_start_matches("http://").trim_end_matches("/v1");
    let mut s = tokio::net::TcpStream::connect(hostport).await.unwrap();
    let req = format!(
        "{method} /v1{path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}
