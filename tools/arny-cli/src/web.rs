//! `arny web`: serves the browser demo (bindings/web-demo) on loopback.
//!
//! The page runs everything itself (wasm SDK, Burn on WebGPU or the CPU);
//! this only hands it files: the page, the wasm package, a manifest, the
//! default model's bytes and the specialists' LoRA adapters.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::http::{HeaderValue, header};
use axum::routing::get;
use sha2::Digest;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;

/// Where the page fetches the model; the manifest below names it.
const MODEL_URL: &str = "models/default.gguf";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Port on 127.0.0.1 (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Address to bind. Anything but loopback exposes the demo to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// The demo's folder (its `pkg/` is built by scripts/build-web.sh).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The model the page runs (default: the default model).
    #[arg(long)]
    model: Option<PathBuf>,
}

fn demo_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    let candidates = match given {
        Some(d) => vec![d],
        None => vec![
            PathBuf::from("bindings/web-demo"),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bindings/web-demo"),
        ],
    };
    let dir = candidates
        .iter()
        .find(|d| d.join("index.html").is_file())
        .with_context(|| format!("no web demo (index.html) in {}", candidates[0].display()))?;
    if !dir.join("pkg/arny_wasm_bg.wasm").is_file() {
        bail!(
            "{} has no wasm package: build it with scripts/build-web.sh",
            dir.join("pkg").display()
        );
    }
    Ok(dir.clone())
}

/// The math specialist's prompt where it runs without its adapter.
const BASE_MATH_PROMPT: &str = "You are a precise mathematics tutor. Solve problems step by step, explain the method, and check the result.";

/// Where the page fetches a known adapter.
fn adapter_url(a: &arny_model_store::KnownAdapter) -> String {
    format!("adapters/{}", a.file_name)
}

/// The built-in manifest, adapted to a page: one model for every role
/// (universal plan: loaded once, instant switches), run by the Burn engine,
/// fetched from this server and checked against its SHA-256 (`sha256`);
/// the specialists' known LoRA adapters are fetched from here too.
/// `other_model`: the page runs a model other than the default, so the
/// context the built-in manifest sets for the default model is dropped and
/// that model's own default applies, and the adapters (trained for the
/// default model) are left out.
pub fn demo_manifest(sha256: &str, other_model: bool) -> Result<String> {
    let mut m: toml::Table = arny_sdk::manifest::BUILTIN
        .parse()
        .context("built-in manifest")?;
    m.insert("plan".into(), "universal".into());
    m.insert("memory_budget".into(), "2 GiB".into());
    let models = m
        .get_mut("models")
        .and_then(|v| v.as_array_mut())
        .context("built-in manifest has no [[models]]")?;
    for spec in models.iter_mut().filter_map(|v| v.as_table_mut()) {
        spec.insert("engine".into(), "burn".into());
        spec.remove("known");
        spec.insert("url".into(), MODEL_URL.into());
        spec.insert("sha256".into(), sha256.into());
        if other_model {
            spec.remove("context_length");
        }
    }
    if let Some(specialists) = m.get_mut("specialists").and_then(|v| v.as_array_mut()) {
        for spec in specialists.iter_mut().filter_map(|v| v.as_table_mut()) {
            let Some(adapter) = spec.get_mut("adapter").and_then(|a| a.as_table_mut()) else {
                continue;
            };
            let known = adapter
                .get("known")
                .and_then(|k| k.as_str())
                .and_then(arny_model_store::known_adapter);
            match known {
                Some(k) if !other_model => {
                    adapter.remove("known");
                    adapter.insert("url".into(), adapter_url(k).into());
                    adapter.insert("sha256".into(), k.sha256.into());
                }
                _ => {
                    // The adapter's terse system prompt was trained with
                    // it; the base model answers math better when told to
                    // show its working (the prompt it had before).
                    spec.remove("adapter");
                    if spec.get("name").and_then(|n| n.as_str()) == Some("math") {
                        spec.insert("system_prompt".into(), BASE_MATH_PROMPT.into());
                    }
                }
            }
        }
    }
    let text = format!(
        "# Served by `arny web`: the built-in manifest for the browser.\n{}",
        toml::to_string(&m)?
    );
    // The page would fail on an invalid one; fail here instead.
    arny_sdk::Manifest::parse(&text, "web manifest", Path::new("."))?;
    Ok(text)
}

pub fn run(args: Args) -> Result<()> {
    let dir = demo_dir(args.dir)?;
    let other_model = args.model.is_some();
    let model = match args.model {
        Some(p) => p,
        None => crate::paths::default_gguf()?,
    };
    let bytes = std::fs::read(&model).with_context(|| format!("reading {}", model.display()))?;
    let sha256 = arny_model_store::hex(&sha2::Sha256::digest(&bytes));
    let manifest = demo_manifest(&sha256, other_model)?;
    let no_cache = SetResponseHeaderLayer::overriding(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    let mut app = Router::new()
        .route(
            "/arny.toml",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, "application/toml; charset=utf-8")],
                    manifest,
                )
            }),
        )
        .route_service(&format!("/{MODEL_URL}"), ServeFile::new(&model));
    for a in arny_model_store::KNOWN_ADAPTERS {
        let path = arny_model_store::locate_adapter(a)?;
        app = app.route_service(&format!("/{}", adapter_url(a)), ServeFile::new(path));
    }
    // Cross-origin isolation: the page may then share its memory with
    // workers (SharedArrayBuffer), which the threaded wasm build needs.
    // Everything the page loads comes from here, so nothing is blocked.
    let coop = SetResponseHeaderLayer::overriding(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    let coep = SetResponseHeaderLayer::overriding(
        header::HeaderName::from_static("cross-origin-embedder-policy"),
        HeaderValue::from_static("require-corp"),
    );
    let app = app
        .fallback_service(ServeDir::new(&dir))
        .layer(no_cache)
        .layer(coop)
        .layer(coep);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.host, args.port))
            .await
            .with_context(|| format!("bind {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        // Scripts wait for this line; it names the real port when --port 0.
        eprintln!("arny web: serving {} on http://{addr}/", dir.display());
        tokio::select! {
            r = axum::serve(listener, app) => r?,
            _ = tokio::signal::ctrl_c() => eprintln!("arny web: stopping"),
        }
        Ok(())
    })
}
