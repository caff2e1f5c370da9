//! The SDK on the real model (SmolLM2-135M, llama.cpp): routing, loading,
//! budgets, failures, cancellation, cloud and privacy.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arny_sdk::{
    AskRequest, Assistant, AssistantOptions, Event, Handler, Manifest, SdkError, UnloadReason,
};
use futures::StreamExt;

fn model() -> PathBuf {
    arny_model_store::require_default_model().expect("the default model; run scripts/setup.sh")
}

/// Hard links (or copies) of the model under new names: distinct files,
/// so distinct resident copies, like separately fine-tuned specialists.
fn copies(dir: &Path, names: &[&str]) {
    for n in names {
        let dest = dir.join(n);
        if std::fs::hard_link(model(), &dest).is_err() {
            std::fs::copy(model(), &dest).unwrap();
        }
    }
}

const SPECIALISTS: &str = r#"
[[specialists]]
name = "math"
model = "MATH"
system_prompt = "You are a precise mathematics tutor. Answer briefly."
temperature = 0
examples = ["What is 3 + 4?", "Solve 2x = 10", "What is 20% of 50?", "Compute 9 times 8"]

[[specialists]]
name = "wellness"
model = "WELL"
system_prompt = "You are a kind wellness counselor. Answer briefly."
examples = ["I feel sad today", "How do I handle stress?", "I'm anxious about work", "I can't sleep because I worry"]

[[specialists]]
name = "logistics"
model = "LOGI"
system_prompt = "You are a practical logistics planner. Answer briefly."
examples = ["Plan my errands for Saturday", "Schedule my week", "Make a packing list for a trip", "Organize a move to a new flat"]
"#;

/// A manifest over `files` (model id = file stem), specialists assigned in order.
fn manifest(dir: &Path, head: &str, files: &[&str], assign: [&str; 3], tail: &str) -> Manifest {
    let mut text = format!("{head}\n");
    for f in files {
        let id = f.trim_end_matches(".gguf");
        text.push_str(&format!(
            "[[models]]\nid = \"{id}\"\nengine = \"gguf\"\npath = \"{f}\"\ncontext_length = 512\n\n"
        ));
    }
    let specs = SPECIALISTS
        .replace("\"MATH\"", &format!("\"{}\"", assign[0]))
        .replace("\"WELL\"", &format!("\"{}\"", assign[1]))
        .replace("\"LOGI\"", &format!("\"{}\"", assign[2]));
    text.push_str(&specs);
    text.push_str(tail);
    Manifest::parse(&text, "test manifest", dir).unwrap()
}

/// An assistant whose specialists all share one copy of the model.
async fn one_model(head: &str, tail: &str) -> (tempfile::TempDir, Assistant) {
    let dir = tempfile::tempdir().unwrap();
    copies(dir.path(), &["m.gguf"]);
    let m = manifest(dir.path(), head, &["m.gguf"], ["m", "m", "m"], tail);
    let a = Assistant::new(m, options()).await.unwrap();
    (dir, a)
}

fn options() -> AssistantOptions {
    AssistantOptions {
        fetch_missing: false,
        ..AssistantOptions::default()
    }
}

async fn ask(a: &Assistant, text: &str, max_tokens: u32) -> Result<arny_sdk::Answer, SdkError> {
    let mut r = AskRequest::new(text);
    r.max_tokens = Some(max_tokens);
    a.ask(r, |_| {}).await
}

fn drain(rx: &mut futures::channel::mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_assistant_routes_to_each_specialist_and_answers() {
    let a = Assistant::builtin().await.unwrap();
    let mut events = a.events();
    for (q, want) in [
        ("I feel anxious about my exam tomorrow", "wellness"),
        ("What is 2+2?", "math"),
        (
            "Plan my errands: bank, pharmacy and the post office",
            "logistics",
        ),
    ] {
        let mut streamed = String::new();
        let mut r = AskRequest::new(q);
        r.max_tokens = Some(if want == "math" { 96 } else { 24 });
        let ans = a.ask(r, |p| streamed.push_str(p)).await.unwrap();
        assert_eq!(
            ans.handler,
            Handler::Specialist { name: want.into() },
            "{q}"
        );
        let d = ans.decision.as_ref().unwrap();
        assert!(d.confidence >= 0.7 && d.confidence <= 1.0, "{d:?}");
        assert!(!ans.text.trim().is_empty());
        assert_eq!(streamed, ans.text, "the stream carries the whole answer");
        if want == "math" {
            let t = ans.text.to_lowercase();
            assert!(t.contains('4') || t.contains("four"), "{}", ans.text);
        }
    }
    let evs = drain(&mut events);
    let routed: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            Event::Routed { label, .. } => Some(label.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(routed, ["wellness", "math", "logistics"]);
    // One file serves every specialist: loaded once.
    assert_eq!(
        evs.iter()
            .filter(|e| matches!(e, Event::Loaded { .. }))
            .count(),
        1,
        "{evs:?}"
    );
    let st = a.status();
    assert_eq!(st.memory.models.len(), 1);
    assert!(
        st.memory.resident_bytes > 50 << 20 && st.memory.resident_bytes <= st.memory.budget_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_specialist_and_empty_requests_are_typed_errors() {
    let (_dir, a) = one_model("", "").await;
    let mut r = AskRequest::new("hi");
    r.specialist = Some("astrology".into());
    let e = a.ask(r, |_| {}).await.unwrap_err();
    assert!(matches!(e, SdkError::UnknownSpecialist { .. }), "{e}");
    assert_eq!(e.code(), "unknown_specialist");
    assert!(e.to_string().contains("math"), "lists the known ones: {e}");
    assert!(matches!(
        a.route("   ").await,
        Err(SdkError::InvalidRequest(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_models_unload_after_the_timeout() {
    let (_dir, a) = one_model("idle_unload_secs = 0.3", "").await;
    let mut events = a.events();
    ask(&a, "What is 5 + 5?", 2).await.unwrap();
    assert_eq!(a.status().memory.models.len(), 1);
    let mut waited = 0;
    while !a.status().memory.models.is_empty() && waited < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    assert!(
        a.status().memory.models.is_empty(),
        "still loaded after 5 s: {:?}",
        a.status().memory
    );
    assert_eq!(a.status().memory.resident_bytes, 0);
    let evs = drain(&mut events);
    assert!(
        evs.iter().any(|e| matches!(
            e,
            Event::Unloaded {
                reason: UnloadReason::Idle,
                ..
            }
        )),
        "{evs:?}"
    );
    // And it comes back on demand.
    ask(&a, "What is 6 + 6?", 2).await.unwrap();
    assert_eq!(a.status().memory.models.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lru_eviction_keeps_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    copies(dir.path(), &["a.gguf", "b.gguf", "c.gguf"]);
    // What one specialist costs, measured: weights plus its session.
    let probe = Assistant::new(
        manifest(dir.path(), "", &["a.gguf"], ["a", "a", "a"], ""),
        options(),
    )
    .await
    .unwrap();
    ask(&probe, "What is 1 + 1?", 1).await.unwrap();
    let one = probe.status().memory.resident_bytes;
    drop(probe);
    let budget = one * 5 / 2; // room for two, not three
    let m = manifest(
        dir.path(),
        &format!("memory_budget = {budget}"),
        &["a.gguf", "b.gguf", "c.gguf"],
        ["a", "b", "c"],
        "",
    );
    let a = Assistant::new(m, options()).await.unwrap();
    let mut events = a.events();
    let spec = |name: &str| {
        let mut r = AskRequest::new("Say hello.");
        r.specialist = Some(name.into());
        r.max_tokens = Some(1);
        r
    };
    let loaded = |a: &Assistant| {
        let mut v: Vec<String> = a
            .status()
            .memory
            .models
            .iter()
            .map(|m| m.model.clone())
            .collect();
        v.sort();
        v
    };
    a.ask(spec("math"), |_| {}).await.unwrap();
    a.ask(spec("wellness"), |_| {}).await.unwrap();
    assert_eq!(loaded(&a), ["a", "b"]);
    a.ask(spec("logistics"), |_| {}).await.unwrap();
    assert_eq!(loaded(&a), ["b", "c"], "a was least recently used");
    assert!(a.status().memory.resident_bytes <= budget);
    a.ask(spec("wellness"), |_| {}).await.unwrap(); // b is now the most recent
    a.ask(spec("math"), |_| {}).await.unwrap();
    assert_eq!(loaded(&a), ["a", "b"], "c was least recently used");
    let evicted: Vec<String> = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e {
            Event::Unloaded {
                model,
                reason: UnloadReason::Evicted,
                ..
            } => Some(model),
            _ => None,
        })
        .collect();
    assert_eq!(evicted, ["a", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_over_the_budget_gets_a_budget_error() {
    let (_dir, a) = one_model("memory_budget = \"20 MiB\"", "").await;
    let e = ask(&a, "What is 2 + 2?", 2).await.unwrap_err();
    assert!(
        matches!(e, SdkError::MemoryBudget { budget, .. } if budget == 20 << 20),
        "{e}"
    );
    assert_eq!(e.code(), "memory_budget_exceeded");
    assert!(a.status().memory.models.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_requests_share_one_load() {
    let (_dir, a) = one_model("", "").await;
    let mut events = a.events();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = AskRequest::new(format!("What is {i} + {i}?"));
            r.specialist = Some("math".into());
            r.max_tokens = Some(2);
            a.ask(r, |_| {}).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let evs = drain(&mut events);
    let loads = evs
        .iter()
        .filter(|e| matches!(e, Event::Loading { .. }))
        .count();
    let loaded = evs
        .iter()
        .filter(|e| matches!(e, Event::Loaded { .. }))
        .count();
    assert_eq!((loads, loaded), (1, 1), "{evs:?}");
    assert_eq!(a.status().memory.models.len(), 1);
    assert_eq!(a.status().memory.models[0].active, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_specialist_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    copies(dir.path(), &["good.gguf"]);
    // Cut the file in half: header intact, tensor data missing.
    let bytes = std::fs::read(model()).unwrap();
    std::fs::write(dir.path().join("bad.gguf"), &bytes[..bytes.len() / 2]).unwrap();
    let m = manifest(
        dir.path(),
        "",
        &["good.gguf", "bad.gguf"],
        ["bad", "good", "good"],
        "",
    );
    let a = Assistant::new(m, options()).await.unwrap();
    let mut events = a.events();
    let spec = |name: &str, q: &str| {
        let mut r = AskRequest::new(q);
        r.specialist = Some(name.into());
        r.max_tokens = Some(4);
        r
    };
    let (bad, good) = tokio::join!(
        a.ask(spec("math", "What is 2 + 2?"), |_| {}),
        a.ask(spec("wellness", "I feel tired."), |_| {})
    );
    let e = bad.unwrap_err();
    assert!(
        matches!(&e, SdkError::Load { model, .. } if model == "bad"),
        "{e}"
    );
    assert!(
        matches!(e.code(), "corrupt" | "wrong_format"),
        "{}: {e}",
        e.code()
    );
    assert!(!good.unwrap().text.is_empty());
    // Nothing is poisoned: the next call tries again and fails the same way,
    // the healthy specialist keeps answering.
    assert!(a.ask(spec("math", "What is 3 + 3?"), |_| {}).await.is_err());
    assert!(
        a.ask(spec("logistics", "Plan my day."), |_| {})
            .await
            .is_ok()
    );
    let evs = drain(&mut events);
    assert_eq!(
        evs.iter()
            .filter(|e| matches!(e, Event::LoadFailed { .. }))
            .count(),
        2,
        "{evs:?}"
    );
    assert!(a.status().memory.models.iter().all(|m| m.model == "good"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_stops_the_stream() {
    let (_dir, a) = one_model("", "").await;
    let mut r = AskRequest::new("Write a long plan for moving house, with many steps.");
    r.specialist = Some("logistics".into());
    r.max_tokens = Some(200);
    let cancel = r.cancel.clone();
    let pieces = AtomicUsize::new(0);
    let ans = a
        .ask(r, |_| {
            if pieces.fetch_add(1, Ordering::SeqCst) + 1 == 5 {
                cancel.cancel();
            }
        })
        .await
        .unwrap();
    assert_eq!(ans.finish_reason, arny_sdk::FinishReason::Cancelled);
    let n = ans.usage.unwrap().generated_tokens;
    assert!(
        (5..=6).contains(&n),
        "stopped right after the cancel, not at {n}"
    );
    // The session is reusable afterwards.
    assert!(!ask(&a, "What is 2 + 2?", 4).await.unwrap().text.is_empty());
}

/// A request that sets only `seed` changes only the seed: the greedy math
/// specialist stays greedy (the same answer), and a request that does set a
/// temperature gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_sampling_overrides_apply_field_by_field() {
    let (_dir, a) = one_model("", "").await;
    let math = |seed: Option<u64>, temperature: Option<f32>| {
        let mut r = AskRequest::new("What is 12 times 7?");
        r.specialist = Some("math".into());
        r.max_tokens = Some(24);
        r.sampling.seed = seed;
        r.sampling.temperature = temperature;
        let a = a.clone();
        async move { a.ask(r, |_| {}).await.unwrap().text }
    };
    let plain = math(None, None).await;
    for seed in [1, 12345] {
        assert_eq!(math(Some(seed), None).await, plain, "seed {seed}");
    }
    let mut differs = 0;
    for seed in [1, 2, 3] {
        differs += usize::from(math(Some(seed), Some(1.5)).await != plain);
    }
    assert!(
        differs >= 2,
        "temperature 1.5 matched greedy {}/3 times",
        3 - differs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn universal_plan_switches_roles_on_one_resident_model() {
    let (_dir, a) = one_model("plan = \"universal\"\nidle_unload_secs = 0.1", "").await;
    // Loaded up front and pinned: idle time does not unload it.
    assert_eq!(a.status().memory.models.len(), 1);
    assert!(a.status().memory.models[0].pinned);
    let w = ask(&a, "I feel sad and alone", 8).await.unwrap();
    let m = ask(&a, "What is 7 times 6?", 8).await.unwrap();
    assert_eq!((w.handler.label(), m.handler.label()), ("wellness", "math"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(a.status().memory.models.len(), 1);
    // Coming back to a role reuses its cached system prompt.
    let again = ask(&a, "I feel tired and unmotivated", 4).await.unwrap();
    assert!(again.usage.unwrap().cached_tokens > 10);
}

/// The same app code on every engine named in ARNY_TEST_ENGINES (default:
/// gguf; CI runs gguf, burn and pte). Engines join by config alone: the
/// pte engine gets the default model's fp32 ExecuTorch export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_app_runs_on_every_configured_engine() {
    let engines = std::env::var("ARNY_TEST_ENGINES").unwrap_or_else(|_| "gguf".into());
    for engine in engines.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let dir = tempfile::tempdir().unwrap();
        let path = if engine == "pte" {
            arny_pte_export::require_default_export(arny_pte_export::PteQuant::Fp32)
                .unwrap_or_else(|e| panic!("{e}"))
                .display()
                .to_string()
        } else {
            copies(dir.path(), &["m.gguf"]);
            "m.gguf".to_string()
        };
        let text = format!(
            "[[models]]\nid = \"m\"\nengine = \"{engine}\"\npath = {path:?}\ncontext_length = 512\n{}",
            SPECIALISTS
                .replace("\"MATH\"", "\"m\"")
                .replace("\"WELL\"", "\"m\"")
                .replace("\"LOGI\"", "\"m\"")
        );
        let m = Manifest::parse(&text, "engine manifest", dir.path()).unwrap();
        let a = Assistant::new(m, options())
            .await
            .unwrap_or_else(|e| panic!("engine {engine}: {e}"));
        let ans = ask(&a, "What is 2+2?", 96).await.unwrap();
        assert_eq!(ans.handler.label(), "math", "engine {engine}");
        let t = ans.text.to_lowercase();
        assert!(
            t.contains('4') || t.contains("four"),
            "engine {engine}: {}",
            ans.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_missing_from_the_build_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    copies(dir.path(), &["m.gguf"]);
    let text = format!(
        "[[models]]\nid = \"m\"\nengine = \"pte\"\npath = \"m.pte\"\n{}",
        SPECIALISTS
            .replace("\"MATH\"", "\"m\"")
            .replace("\"WELL\"", "\"m\"")
            .replace("\"LOGI\"", "\"m\"")
    );
    let m = Manifest::parse(&text, "pte manifest", dir.path()).unwrap();
    let opts = AssistantOptions {
        engines: arny_sdk::Engines::default(),
        fetch_missing: false,
        model_bytes: Default::default(),
        adapter_bytes: Default::default(),
        events: None,
    };
    let e = Assistant::new(m, opts).await.err().unwrap();
    assert!(matches!(e, SdkError::EngineUnavailable { .. }), "{e}");
}

// ---- cloud ---------------------------------------------------------------

/// An `arny serve` on loopback, as the "cloud".
async fn loopback_cloud(api_key: Option<&str>) -> (String, tokio::task::JoinHandle<()>) {
    let dir = tempfile::tempdir().unwrap();
    copies(dir.path(), &["m.gguf"]);
    let m = manifest(
        dir.path(),
        "plan = \"universal\"",
        &["m.gguf"],
        ["m", "m", "m"],
        "",
    );
    let server_side = Assistant::new(m, options()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let opts = arny_server::ServerOptions {
        api_key: api_key.map(str::to_string),
        max_concurrent: 2,
        ..Default::default()
    };
    let h = tokio::spawn(async move {
        let _dir = dir;
        arny_server::serve(listener, server_side, opts)
            .await
            .unwrap();
    });
    (url, h)
}

fn cloud_tail(url: &str, extra: &str) -> String {
    format!(
        "\n[gateway]\ncloud_examples = [\"Write a poem about the sea\", \"Who painted the Mona Lisa?\", \"Translate hello into French\", \"Explain how rainbows form\"]\n\n[cloud]\nbase_url = \"{url}\"\nmodel = \"arny\"\napi_key_env = \"ARNY_TEST_CLOUD_KEY\"\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cloud_requests_go_to_the_cloud_endpoint() {
    let (url, server) = loopback_cloud(None).await;
    let (_dir, a) = one_model("", &cloud_tail(&url, "")).await;
    let mut events = a.events();
    let mut streamed = Vec::new();
    let mut r = AskRequest::new("Write a poem about the moon and the stars");
    r.max_tokens = Some(16);
    let ans = a.ask(r, |p| streamed.push(p.to_string())).await.unwrap();
    assert_eq!(
        ans.handler,
        Handler::Cloud {
            model: "arny".into()
        }
    );
    assert!(
        !ans.text.is_empty() && streamed.len() > 1,
        "streamed in pieces: {streamed:?}"
    );
    assert_eq!(streamed.concat(), ans.text);
    let evs = drain(&mut events);
    assert!(evs.iter().any(|e| matches!(e, Event::CloudRequest { .. })));
    // No local model was needed for it.
    assert!(
        !evs.iter().any(|e| matches!(e, Event::Loading { .. })),
        "{evs:?}"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_only_never_opens_a_socket() {
    // A listener where the cloud would be: it must never see a connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let (_dir, a) = one_model("privacy = \"local_only\"", &cloud_tail(&url, "")).await;
    let ans = ask(&a, "Write a poem about the moon and the stars", 8)
        .await
        .unwrap();
    let d = ans.decision.clone().unwrap();
    assert_eq!(d.label, "cloud");
    match &ans.handler {
        Handler::LocalStandIn { name, reason } => {
            assert_eq!(Some(name), d.best_local.as_ref());
            assert!(reason.contains("local_only"), "{reason}");
        }
        h => panic!("expected a local stand-in, got {h:?}"),
    }
    assert!(!ans.text.is_empty());
    assert_eq!(a.status().cloud, None);
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("something connected to the cloud address: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cloud_is_answered_locally_or_reported() {
    // Bind then drop: a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/v1");
    let (_dir, a) = one_model("", &cloud_tail(&url, "")).await;
    let ans = ask(&a, "Write a poem about the moon and the stars", 4)
        .await
        .unwrap();
    assert!(
        matches!(&ans.handler, Handler::LocalStandIn { reason, .. } if reason.contains("unreachable")),
        "{:?}",
        ans.handler
    );

    let (_dir, a) = one_model("", &cloud_tail(&url, "local_when_unreachable = false")).await;
    let e = ask(&a, "Write a poem about the moon and the stars", 4)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "cloud_unreachable", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejected_cloud_key_is_a_typed_error() {
    let (url, server) = loopback_cloud(Some("right-key")).await;
    let dir = tempfile::tempdir().unwrap();
    copies(dir.path(), &["m.gguf"]);
    // SAFETY: no other test in this binary reads this variable.
    unsafe { std::env::set_var("ARNY_TEST_CLOUD_KEY", "wrong-key") };
    let m = manifest(
        dir.path(),
        "",
        &["m.gguf"],
        ["m", "m", "m"],
        &cloud_tail(&url, ""),
    );
    let a = Assistant::new(m, options()).await.unwrap();
    let e = ask(&a, "Write a poem about the moon and the stars", 4)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "cloud_unauthorized", "{e}");
    server.abort();
}

#[test]
fn events_serialize_for_uis() {
    let e = Event::Loading {
        model: "m".into(),
        specialists: vec!["math".into()],
    };
    let v = serde_json::to_value(&e).unwrap();
    assert_eq!(v["event"], "loading");
    assert_eq!(v["specialists"][0], "math");
    let _ = Arc::new(());
    let _ = futures::stream::empty::<()>().boxed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_and_ensemble_gateways_score_with_the_gateway_model() {
    let dir = tempfile::tempdir().unwrap();
    copies(dir.path(), &["m.gguf"]);
    for strategy in ["model", "ensemble"] {
        let tail = format!(
            "\n[gateway]\nstrategy = \"{strategy}\"\nmodel = \"m\"\ncalibration_per_label = 2\ncloud_examples = [\"Write a poem about the sea\", \"Who painted the Mona Lisa?\", \"Translate hello into French\"]\n"
        );
        let m = manifest(dir.path(), "", &["m.gguf"], ["m", "m", "m"], &tail);
        let a = Assistant::new(m, options()).await.unwrap();
        // The gateway model is resident and pinned before any request.
        let st = a.status();
        assert_eq!(st.strategy, strategy);
        assert!(
            st.memory.models.len() == 1 && st.memory.models[0].pinned,
            "{:?}",
            st.memory
        );
        let q = "What is 12 times 7?";
        let d1 = a.route(q).await.unwrap();
        let d2 = a.route(q).await.unwrap();
        assert_eq!(d1.strategy, strategy);
        assert_eq!(d1.scores.len(), 4);
        let total: f32 = d1.scores.iter().map(|s| s.probability).sum();
        assert!((total - 1.0).abs() < 1e-3, "{d1:?}");
        assert!(
            d1.scores.iter().all(|s| s.probability > 0.0),
            "every label gets a score: {d1:?}"
        );
        // The second time most of the prompt comes from the KV cache; the
        // scores may move by float noise only.
        for (a, b) in d1.scores.iter().zip(&d2.scores) {
            assert!(
                a.label == b.label && (a.probability - b.probability).abs() < 1e-2,
                "{d1:?} vs {d2:?}"
            );
        }
        if strategy == "ensemble" {
            assert_eq!(d1.top, "math", "{d1:?}");
        }
    }
}

/// A regression guard on routing quality: a held-out set written apart from
/// the built-in examples (sdk/router/data/heldout-own.jsonl, 48 queries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_gateway_generalises_to_held_out_queries() {
    let a = Assistant::new(Manifest::builtin(), options())
        .await
        .unwrap();
    let data = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/router/data/heldout-own.jsonl"
    ))
    .unwrap();
    let (mut n, mut ok) = (0, 0);
    for line in data.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let d = a.route(v["text"].as_str().unwrap()).await.unwrap();
        n += 1;
        ok += (d.label == v["label"].as_str().unwrap()) as usize;
    }
    let acc = ok as f64 / n as f64;
    assert!(acc >= 0.9, "accuracy {acc:.3} ({ok}/{n})");
}

/// Weights handed over as bytes (what the browser does) replace the
/// manifest's file, which need not exist; the universal plan's load, done
/// inside `Assistant::new`, reaches the events channel given in the
/// options, with its progress; status names the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_bytes_replace_the_file_and_early_events_are_seen() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "plan = \"universal\"",
        &["absent.gguf"],
        ["absent", "absent", "absent"],
        "",
    );
    let bytes: Arc<[u8]> = std::fs::read(model()).unwrap().into();
    let (tx, mut rx) = futures::channel::mpsc::unbounded();
    let mut opts = options();
    opts.model_bytes.insert("absent".into(), bytes.clone());
    opts.events = Some(tx);
    let a = Assistant::new(m, opts).await.unwrap();
    let evs = drain(&mut rx);
    let progress: Vec<f32> = evs
        .iter()
        .filter_map(|e| match e {
            Event::LoadProgress { fraction, .. } => Some(*fraction),
            _ => None,
        })
        .collect();
    assert!(
        evs.iter().any(|e| matches!(e, Event::Loaded { .. })),
        "{evs:?}"
    );
    assert!(
        !progress.is_empty() && progress.len() <= 101,
        "{progress:?}"
    );
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    let status = a.status();
    let loaded = &status.memory.models[0];
    assert_eq!(loaded.path, "memory:absent");
    assert!(
        loaded
            .device
            .as_deref()
            .is_some_and(|d| d.starts_with("cpu")),
        "{loaded:?}"
    );
    let answer = ask(&a, "What is 2+2?", 24).await.unwrap();
    assert_eq!(answer.handler.label(), "math");
    // Greedy here: "Two and two is equal to four."
    let text = answer.text.to_lowercase();
    assert!(text.contains('4') || text.contains("four"), "{text}");
}

/// Specialists as LoRA adapters over one resident model: the shipped math
/// adapter loads once on first use (an `adapter_loaded` event), counts
/// against the budget, is named in `status()`, and answers as tuned; a
/// specialist whose adapter is a model file fails with a typed error that
/// names it, and the others keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specialists_can_be_adapters_over_one_model() {
    let dir = tempfile::tempdir().unwrap();
    copies(dir.path(), &["m.gguf"]);
    let tail = "";
    let mut m = manifest(
        dir.path(),
        "plan = \"hybrid\"",
        &["m.gguf"],
        ["m", "m", "m"],
        tail,
    );
    m.specialists[0].adapter = Some(arny_sdk::manifest::AdapterSpec {
        path: None,
        known: Some("math-smollm2-135m".into()),
        url: None,
        sha256: None,
        scale: None,
    });
    m.specialists[0].system_prompt =
        "You are a precise calculator. Work it out in one short line and end with the result."
            .into();
    m.specialists[2].adapter = Some(arny_sdk::manifest::AdapterSpec {
        path: Some("m.gguf".into()),
        known: None,
        url: None,
        sha256: None,
        scale: None,
    });
    let a = Assistant::new(m, options()).await.unwrap();
    let mut events = a.events();
    let before = a.status().memory.resident_bytes;

    let mut r = AskRequest::new("What is 20% of 80?");
    r.specialist = Some("math".into());
    r.max_tokens = Some(48);
    let answer = a.ask(r, |_| {}).await.unwrap();
    assert!(
        answer.text.trim_end_matches('.').ends_with("16"),
        "{}",
        answer.text
    );
    let loaded: Vec<Event> = drain(&mut events)
        .into_iter()
        .filter(|e| matches!(e, Event::AdapterLoaded { .. }))
        .collect();
    assert_eq!(loaded.len(), 1, "{loaded:?}");
    let Event::AdapterLoaded {
        specialist,
        adapter,
        bytes,
        ..
    } = &loaded[0]
    else {
        unreachable!()
    };
    assert_eq!(
        (specialist.as_str(), adapter.as_str()),
        ("math", "math-smollm2-135m")
    );
    assert!(*bytes > 9_000_000 && *bytes < 10_500_000, "{bytes}");
    let status = a.status().memory;
    assert_eq!(status.models.len(), 1, "one resident model");
    assert_eq!(status.models[0].adapters, ["math-smollm2-135m"]);
    assert!(
        status.resident_bytes >= before + bytes,
        "the adapter is counted"
    );

    // Asked again: the same adapter, no second load.
    let mut r = AskRequest::new("What is 30 + 43?");
    r.specialist = Some("math".into());
    r.max_tokens = Some(48);
    a.ask(r, |_| {}).await.unwrap();
    assert!(
        !drain(&mut events)
            .iter()
            .any(|e| matches!(e, Event::AdapterLoaded { .. }))
    );

    let mut r = AskRequest::new("Plan my errands");
    r.specialist = Some("logistics".into());
    let err = a.ask(r, |_| {}).await.unwrap_err();
    assert_eq!(err.code(), "wrong_format", "{err}");
    assert!(err.to_string().contains("logistics"), "{err}");
    let mut r = AskRequest::new("I feel sad today");
    r.specialist = Some("wellness".into());
    r.max_tokens = Some(8);
    a.ask(r, |_| {})
        .await
        .expect("the other specialists still answer");
}

/// An adapter the app already holds (a page's download, an app bundle)
/// replaces the manifest's `url`: nothing is downloaded, and the held bytes
/// are what the specialist runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_can_come_from_bytes_the_app_holds() {
    let dir = tempfile::tempdir().unwrap();
    copies(dir.path(), &["m.gguf"]);
    let mut m = manifest(
        dir.path(),
        "plan = \"universal\"",
        &["m.gguf"],
        ["m", "m", "m"],
        "",
    );
    let url = "http://127.0.0.1:9/never-fetched/math.lora.gguf";
    m.specialists[0].adapter = Some(arny_sdk::manifest::AdapterSpec {
        path: None,
        known: None,
        url: Some(url.into()),
        sha256: Some(arny_model_store::MATH_SMOLLM2_135M.sha256.into()),
        scale: None,
    });
    m.specialists[0].system_prompt =
        "You are a precise calculator. Work it out in one short line and end with the result."
            .into();
    let bytes = arny_model_store::adapter_bytes(&arny_model_store::MATH_SMOLLM2_135M).unwrap();
    let mut opts = options();
    opts.adapter_bytes.insert(url.into(), bytes.into());
    let a = Assistant::new(m, opts).await.unwrap();
    let mut r = AskRequest::new("What is 20% of 80?");
    r.specialist = Some("math".into());
    r.max_tokens = Some(48);
    let answer = a.ask(r, |_| {}).await.unwrap();
    assert!(
        answer.text.trim_end_matches('.').ends_with("16"),
        "{}",
        answer.text
    );
    assert_eq!(a.status().memory.models[0].adapters, [url]);
}

/// `[gateway] adapter`: the model strategy scores with the adapter loaded
/// over the gateway model (an `adapter_loaded` event for `gateway`), and
/// its scores are not those of the model alone. The shipped math adapter
/// stands in for a tuned gateway here: the wiring is what is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_adapter_changes_what_the_model_strategy_scores() {
    let dir = tempfile::tempdir().unwrap();
    copies(dir.path(), &["m.gguf"]);
    let gateway = |adapter: &str| {
        format!(
            "\n[gateway]\nstrategy = \"model\"\nmodel = \"m\"\nfew_shot = 0\ncalibration_per_label = 2\n{adapter}\n"
        )
    };
    let route = async |tail: String| {
        let m = manifest(dir.path(), "", &["m.gguf"], ["m", "m", "m"], &tail);
        let (tx, mut rx) = futures::channel::mpsc::unbounded();
        let mut opts = options();
        opts.events = Some(tx);
        let a = Assistant::new(m, opts).await.unwrap();
        let d = a.route("I feel anxious before exams").await.unwrap();
        let mut gateway_adapters = Vec::new();
        while let Ok(e) = rx.try_recv() {
            if let Event::AdapterLoaded {
                specialist,
                adapter,
                ..
            } = e
            {
                gateway_adapters.push((specialist, adapter));
            }
        }
        (d, gateway_adapters)
    };
    let (plain, none) = route(gateway("")).await;
    assert!(none.is_empty(), "{none:?}");
    let (tuned, loaded) = route(gateway("adapter = { known = \"math-smollm2-135m\" }")).await;
    assert_eq!(
        loaded,
        [("gateway".to_string(), "math-smollm2-135m".to_string())]
    );
    let moved = plain
        .scores
        .iter()
        .zip(&tuned.scores)
        .map(|(a, b)| (a.probability - b.probability).abs())
        .fold(0f32, f32::max);
    assert!(
        moved > 1e-3,
        "the adapter changes nothing: {plain:?} vs {tuned:?}"
    );
}

/// A specialist that declares `output_schema` answers in that shape; a
/// request's own constraint replaces it, and a request that sets none
/// keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_output_schema_shapes_every_answer() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("extract.json"),
        r#"{"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
            "country": {"type": "string", "maxLength": 20}},
            "required": ["city", "country"], "additionalProperties": false}"#,
    )
    .unwrap();
    let tail = r#"
[[specialists]]
name = "extract"
model = "m"
system_prompt = "You extract facts as JSON."
temperature = 0
output_schema = "extract.json"
examples = ["Where is the Eiffel Tower?", "Which country is Rome in?"]
"#;
    copies(dir.path(), &["m.gguf"]);
    let m = manifest(dir.path(), "", &["m.gguf"], ["m", "m", "m"], tail);
    let a = Assistant::new(m, options()).await.unwrap();
    let mut r = AskRequest::new("What is the capital of France?");
    r.specialist = Some("extract".into());
    r.max_tokens = Some(48);
    let answer = a.ask(r, |_| {}).await.unwrap();
    assert!(!answer.incomplete, "{answer:?}");
    let v: serde_json::Value = serde_json::from_str(&answer.text).unwrap();
    assert_eq!(v["city"], "Paris", "{}", answer.text);
    assert!(v["country"].is_string(), "{}", answer.text);

    let mut r = AskRequest::new("What is the capital of France?");
    r.specialist = Some("extract".into());
    r.constraint = Some(arny_sdk::Constraint::Regex("(yes|no)".into()));
    let answer = a.ask(r, |_| {}).await.unwrap();
    assert!(
        ["yes", "no"].contains(&answer.text.as_str()),
        "{}",
        answer.text
    );

    // A missing schema file is a manifest error at build time.
    let bad = manifest(
        dir.path(),
        "",
        &["m.gguf"],
        ["m", "m", "m"],
        &tail.replace("extract.json", "missing.json"),
    );
    match Assistant::new(bad, options()).await {
        Err(SdkError::Manifest { message, .. }) => {
            assert!(message.contains("missing.json"), "{message}")
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a missing output_schema was accepted"),
    }
}
