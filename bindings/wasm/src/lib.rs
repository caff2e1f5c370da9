//! Arny's SDK for JavaScript, through wasm-bindgen.
//!
//! ```js
//! import init, { Assistant } from "./pkg/arny_wasm.js";
//! await init();
//! const assistant = await Assistant.create(manifestToml, {
//!   device: "auto",                 // "gpu" (WebGPU), "cpu", or auto
//!   onEvent: (e) => console.log(e), // downloads, loads, routing decisions
//! });
//! const d = await assistant.route("What is 2+2?");  // {label: "math", confidence, ...}
//! const a = await assistant.ask("What is 2+2?", (piece) => out.append(piece));
//! assistant.cancel();               // stops what is generating
//! ```
//!
//! Models come from the manifest's `url` (fetched with progress and checked
//! against its `sha256`) or from bytes the page already has
//! (`options.models = { id: Uint8Array }`). The engine is Burn: WebGPU when
//! the browser gives an adapter, else the CPU backend. The example-based
//! gateway needs no model.
//!
//! Every failure is a JS `Error` whose message starts with the SDK's stable
//! code (`manifest: …`, `unknown_specialist: …`); a Rust panic is logged to
//! the console and becomes an exception rather than aborting the page.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use arny_sdk::{
    AskOptions, Assistant as SdkAssistant, AssistantOptions, CancelToken, Engines, Event, Manifest,
    SdkError,
};
use futures::StreamExt;
use js_sys::{Function, Object, Promise, Reflect, Uint8Array};
use send_wrapper::SendWrapper;
use serde::Serialize;
use sha2::{Digest, Sha256};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, future_to_promise, spawn_local};

// wgpu's WebGPU backend has no name for the `subgroups` feature, so the
// devices it requests never have it; yet Burn's WGSL compiler (cubecl) adds
// `enable subgroups;` to every kernel that reads a subgroup builtin, and
// Chromium rejects those kernels (its matmuls among them) on such a device.
// So the device request gets `subgroups` added whenever the adapter offers
// it. Adapters without it cannot run Burn's kernels: see `gpu_usable`.
#[wasm_bindgen(inline_js = r#"
export function request_subgroups_where_offered() {
  const A = globalThis.GPUAdapter;
  if (!A || A.prototype.__arnySubgroups) return;
  const requestDevice = A.prototype.requestDevice;
  A.prototype.requestDevice = function (descriptor) {
    const d = Object.assign({}, descriptor || {});
    const wanted = new Set(d.requiredFeatures || []);
    if (this.features.has("subgroups")) wanted.add("subgroups");
    d.requiredFeatures = Array.from(wanted);
    return requestDevice.call(this, d);
  };
  A.prototype.__arnySubgroups = true;
  // Tint's subgroup-uniformity analysis rejects cubecl's plane reductions
  // (naga, which cubecl is developed against, has no such analysis); the
  // reductions run in uniform control flow, so the diagnostic is turned off.
  const D = globalThis.GPUDevice;
  const createShaderModule = D.prototype.createShaderModule;
  D.prototype.createShaderModule = function (descriptor) {
    if (descriptor && typeof descriptor.code === "string" && descriptor.code.includes("enable subgroups;")) {
      descriptor = Object.assign({}, descriptor, {
        code: "diagnostic(off, subgroup_uniformity);\n" + descriptor.code,
      });
    }
    return createShaderModule.call(this, descriptor);
  };
}
"#)]
extern "C" {
    fn request_subgroups_where_offered();
}

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
    request_subgroups_where_offered();
}

/// The page's WebGPU adapter, when it can run Burn's kernels (it offers
/// the `subgroups` feature), else why not.
async fn gpu_usable() -> Result<(), String> {
    let adapter = request_adapter()
        .await
        .map_err(|e| format!("{e:?}"))?
        .ok_or_else(|| "this browser offers no WebGPU adapter".to_string())?;
    let features = Reflect::get(&adapter, &"features".into()).unwrap_or(JsValue::UNDEFINED);
    let has: Option<Function> = Reflect::get(&features, &"has".into())
        .ok()
        .and_then(|f| f.dyn_into().ok());
    let subgroups = has
        .and_then(|f| f.call1(&features, &"subgroups".into()).ok())
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    if subgroups {
        Ok(())
    } else {
        Err("the WebGPU adapter lacks the `subgroups` feature that Burn's kernels need".into())
    }
}

async fn request_adapter() -> Result<Option<JsValue>, JsError> {
    let global = js_sys::global();
    let navigator = Reflect::get(&global, &"navigator".into()).unwrap_or(JsValue::UNDEFINED);
    let gpu = Reflect::get(&navigator, &"gpu".into()).unwrap_or(JsValue::UNDEFINED);
    if gpu.is_undefined() || gpu.is_null() {
        return Ok(None);
    }
    let request: Function = Reflect::get(&gpu, &"requestAdapter".into())
        .map_err(|e| js_error("navigator.gpu", e))?
        .dyn_into()
        .map_err(|e| js_error("navigator.gpu.requestAdapter", e))?;
    let promise: Promise = request
        .call0(&gpu)
        .map_err(|e| js_error("requestAdapter", e))?
        .dyn_into()
        .map_err(|e| js_error("requestAdapter", e))?;
    let adapter = JsFuture::from(promise)
        .await
        .map_err(|e| js_error("requestAdapter", e))?;
    Ok((!adapter.is_null() && !adapter.is_undefined()).then_some(adapter))
}

#[wasm_bindgen(module = "/src/threads.js")]
extern "C" {
    #[wasm_bindgen(catch)]
    fn start_workers(n: u32, module: JsValue, memory: JsValue) -> Result<Promise, JsValue>;
}

/// Whether this build runs the CPU path on several threads: the
/// `pkg-threads` build (`+atomics`, shared memory), which needs a
/// cross-origin isolated page (`crossOriginIsolated`).
#[wasm_bindgen(js_name = threadsSupported)]
pub fn threads_supported() -> bool {
    cfg!(target_feature = "atomics")
}

/// Starts `n` Web Workers that take part in the CPU path's matmuls with
/// the calling thread (so `n + 1` threads in all; one per core beyond the
/// page's own is the usual choice). Resolves to the number running.
/// Fails with `invalid_request` on a build without threads
/// ([`threads_supported`]) or a page that is not cross-origin isolated.
#[wasm_bindgen(js_name = startThreads)]
pub async fn start_threads(n: u32) -> Result<u32, JsError> {
    if !threads_supported() {
        return Err(JsError::new(
            "invalid_request: threads: this build has no wasm threads (load pkg-threads, built by scripts/build-web.sh)",
        ));
    }
    let isolated = Reflect::get(&js_sys::global(), &"crossOriginIsolated".into())
        .ok()
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    if !isolated {
        return Err(JsError::new(
            "invalid_request: threads: the page is not cross-origin isolated (serve it with COOP: same-origin and COEP: require-corp)",
        ));
    }
    let started = start_workers(n, wasm_bindgen::module(), wasm_bindgen::memory())
        .map_err(|e| js_error("engine_unavailable: threads", e))?;
    JsFuture::from(started)
        .await
        .map_err(|e| js_error("engine_unavailable: threads", e))?;
    Ok(n)
}

/// A worker's entry point (called by the workers [`start_threads`] makes):
/// parks in the kernels' pool and never returns.
#[cfg(target_feature = "atomics")]
#[wasm_bindgen(js_name = workerMain)]
pub fn worker_main() {
    arny_qmatmul::pool::worker_main()
}

/// Sends the SDK's `tracing` logs to the browser console at `level`
/// (`error`, `warn`, `info`, `debug`, `trace`). Only the first call counts.
#[wasm_bindgen(js_name = initLogging)]
pub fn init_logging(level: &str) {
    let level = match level {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    let config = tracing_wasm::WASMLayerConfigBuilder::new()
        .set_max_level(level)
        .build();
    // Panics if a subscriber is set; a second call is a no-op instead.
    let _ = std::panic::catch_unwind(|| tracing_wasm::set_as_global_default_with_config(config));
}

fn sdk_error(e: SdkError) -> JsError {
    JsError::new(&format!("{}: {e}", e.code()))
}

fn js_error(context: &str, e: JsValue) -> JsError {
    let msg = e
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"));
    JsError::new(&format!("{context}: {msg}"))
}

fn to_js<T: Serialize>(value: &T) -> JsValue {
    // Plain objects, not Maps, so pages can read fields directly.
    let s = serde_wasm_bindgen::Serializer::json_compatible();
    value.serialize(&s).unwrap_or(JsValue::NULL)
}

/// The page's WebGPU adapter info (`{vendor, architecture, ...}`), or null
/// when there is none.
#[wasm_bindgen(js_name = webgpuAdapter)]
pub async fn webgpu_adapter() -> Result<JsValue, JsError> {
    Ok(match request_adapter().await? {
        Some(a) => Reflect::get(&a, &"info".into()).unwrap_or(a),
        None => JsValue::NULL,
    })
}

/// Downloads `url` into memory, calling `onProgress(loaded, total)` (total
/// is null without a Content-Length) as chunks arrive, and checks the
/// SHA-256 when one is given. Resolves to the bytes.
#[wasm_bindgen(js_name = fetchModel)]
pub async fn fetch_model(
    url: String,
    sha256: Option<String>,
    on_progress: Option<Function>,
) -> Result<Uint8Array, JsError> {
    let bytes = fetch_bytes(&url, sha256.as_deref(), &|loaded, total| {
        if let Some(f) = &on_progress {
            let total = total.map_or(JsValue::NULL, |t| JsValue::from(t as f64));
            let _ = f.call2(&JsValue::NULL, &JsValue::from(loaded as f64), &total);
        }
    })
    .await?;
    Ok(Uint8Array::from(bytes.as_slice()))
}

async fn fetch_bytes(
    url: &str,
    sha256: Option<&str>,
    progress: &dyn Fn(u64, Option<u64>),
) -> Result<Vec<u8>, JsError> {
    let fail = |e: JsValue| js_error(&format!("fetch {url}"), e);
    let global = js_sys::global();
    let fetch: Function = Reflect::get(&global, &"fetch".into())
        .map_err(fail)?
        .dyn_into()
        .map_err(fail)?;
    let promise: Promise = fetch
        .call1(&global, &JsValue::from_str(url))
        .map_err(fail)?
        .dyn_into()
        .map_err(fail)?;
    let response: web_sys::Response = JsFuture::from(promise)
        .await
        .map_err(fail)?
        .dyn_into()
        .map_err(fail)?;
    if !response.ok() {
        return Err(JsError::new(&format!(
            "fetch {url}: HTTP {} {}",
            response.status(),
            response.status_text()
        )));
    }
    let total = response
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<u64>().ok());
    let body = response
        .body()
        .ok_or_else(|| JsError::new(&format!("fetch {url}: no body")))?;
    let reader: web_sys::ReadableStreamDefaultReader =
        body.get_reader().dyn_into().map_err(|o| fail(o.into()))?;
    let mut bytes = Vec::with_capacity(total.unwrap_or(0) as usize);
    let mut hasher = Sha256::new();
    progress(0, total);
    loop {
        let chunk = JsFuture::from(reader.read()).await.map_err(fail)?;
        let done = Reflect::get(&chunk, &"done".into())
            .map_err(fail)?
            .as_bool()
            .unwrap_or(true);
        if done {
            break;
        }
        let value: Uint8Array = Reflect::get(&chunk, &"value".into())
            .map_err(fail)?
            .dyn_into()
            .map_err(fail)?;
        let start = bytes.len();
        bytes.resize(start + value.length() as usize, 0);
        value.copy_to(&mut bytes[start..]);
        hasher.update(&bytes[start..]);
        progress(bytes.len() as u64, total);
    }
    if let Some(want) = sha256 {
        let got: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if !got.eq_ignore_ascii_case(want) {
            return Err(JsError::new(&format!(
                "model_store: {url}: SHA-256 is {got}, the manifest says {want} (a damaged or different file)"
            )));
        }
    }
    Ok(bytes)
}

/// The SDK's assistant in a page.
#[wasm_bindgen]
pub struct Assistant {
    inner: SdkAssistant,
    /// Cancel flags of the requests generating now, by request number.
    running: Rc<RefCell<Vec<(u64, CancelToken)>>>,
    next: Rc<Cell<u64>>,
}

#[wasm_bindgen]
impl Assistant {
    /// Builds an assistant from manifest text (TOML, the same format as on
    /// native). `options`:
    /// - `device`: `"auto"` (default), `"gpu"` or `"cpu"`, for every model;
    /// - `models`: `{ id: Uint8Array }` weights the page already has;
    /// - `onEvent(event)`: `{event: "download", model, loaded, total}` while
    ///   weights download (`{event: "download", adapter, loaded, total}`
    ///   for a specialist's adapter), then the SDK's events (`loading`,
    ///   `load_progress`, `loaded`, `routed`, `unloaded`, ...).
    ///
    /// Models without bytes are fetched from their manifest `url`.
    pub async fn create(manifest_toml: String, options: JsValue) -> Result<Assistant, JsError> {
        let get = |key: &str| {
            if options.is_object() {
                Reflect::get(&options, &key.into()).unwrap_or(JsValue::UNDEFINED)
            } else {
                JsValue::UNDEFINED
            }
        };
        let on_event = get("onEvent").dyn_into::<Function>().ok();
        let emit = {
            let on_event = on_event.clone();
            move |v: JsValue| {
                if let Some(f) = &on_event
                    && let Err(e) = f.call1(&JsValue::NULL, &v)
                {
                    tracing::warn!(error = ?e, "onEvent threw");
                }
            }
        };
        let mut manifest = Manifest::parse(&manifest_toml, "<page>", std::path::Path::new("."))
            .map_err(sdk_error)?;
        if let Some(d) = get("device").as_string() {
            let device: arny_sdk::DeviceRequest =
                serde_json::from_value(serde_json::Value::String(d.clone())).map_err(|_| {
                    JsError::new(&format!(
                        "invalid_argument: device `{d}` (use auto, gpu or cpu)"
                    ))
                })?;
            for m in &mut manifest.models {
                m.device = Some(device);
            }
        }
        // A WebGPU adapter that cannot run the kernels would fail mid-answer;
        // decide now: `auto` takes the CPU, `gpu` is refused.
        let wants_gpu = |m: &arny_sdk::manifest::ModelSpec| {
            m.device.unwrap_or_default() != arny_sdk::DeviceRequest::Cpu
        };
        if manifest.models.iter().any(wants_gpu)
            && let Err(why) = gpu_usable().await
        {
            for m in &mut manifest.models {
                match m.device.unwrap_or_default() {
                    arny_sdk::DeviceRequest::Gpu => {
                        return Err(JsError::new(&format!(
                            "unsupported: model `{}` asks for the GPU, but {why}",
                            m.id.get_ref()
                        )));
                    }
                    arny_sdk::DeviceRequest::Auto => {
                        tracing::info!(reason = %why, "WebGPU unusable; the CPU backend runs the models");
                        m.device = Some(arny_sdk::DeviceRequest::Cpu);
                    }
                    arny_sdk::DeviceRequest::Cpu => {}
                }
            }
        }

        let mut model_bytes: HashMap<String, Arc<[u8]>> = HashMap::new();
        let given = get("models");
        for m in &manifest.models {
            let id = m.id.get_ref().clone();
            let held = if given.is_object() {
                Reflect::get(&given, &id.as_str().into()).unwrap_or(JsValue::UNDEFINED)
            } else {
                JsValue::UNDEFINED
            };
            let bytes: Vec<u8> = if let Ok(a) = held.dyn_into::<Uint8Array>() {
                a.to_vec()
            } else if let Some(url) = &m.url {
                let progress = |loaded: u64, total: Option<u64>| {
                    let e = Object::new();
                    let _ = Reflect::set(&e, &"event".into(), &"download".into());
                    let _ = Reflect::set(&e, &"model".into(), &id.as_str().into());
                    let _ = Reflect::set(&e, &"loaded".into(), &(loaded as f64).into());
                    let total = total.map_or(JsValue::NULL, |t| (t as f64).into());
                    let _ = Reflect::set(&e, &"total".into(), &total);
                    emit(e.into());
                };
                fetch_bytes(url, m.sha256.as_deref(), &progress).await?
            } else {
                return Err(JsError::new(&format!(
                    "manifest: model `{id}`: in the browser a model needs a `url` or bytes in options.models"
                )));
            };
            model_bytes.insert(id, bytes.into());
        }
        // Specialists' LoRA adapters, fetched once per `url` however many
        // specialists share one.
        let mut adapter_bytes: HashMap<String, Arc<[u8]>> = HashMap::new();
        for s in &manifest.specialists {
            let Some(a) = &s.adapter else { continue };
            let Some(url) = a.url.as_deref() else {
                return Err(JsError::new(&format!(
                    "manifest: specialist `{}`: in the browser an adapter needs a `url` (+ `sha256`)",
                    s.name.get_ref()
                )));
            };
            if adapter_bytes.contains_key(url) {
                continue;
            }
            let progress = |loaded: u64, total: Option<u64>| {
                let e = Object::new();
                let _ = Reflect::set(&e, &"event".into(), &"download".into());
                let _ = Reflect::set(&e, &"adapter".into(), &url.into());
                let _ = Reflect::set(&e, &"loaded".into(), &(loaded as f64).into());
                let total = total.map_or(JsValue::NULL, |t| (t as f64).into());
                let _ = Reflect::set(&e, &"total".into(), &total);
                emit(e.into());
            };
            let bytes = fetch_bytes(url, a.sha256.as_deref(), &progress).await?;
            adapter_bytes.insert(url.to_string(), bytes.into());
        }

        let (tx, mut rx) = futures::channel::mpsc::unbounded::<Event>();
        spawn_local(async move {
            while let Some(e) = rx.next().await {
                emit(to_js(&e));
            }
        });
        let options = AssistantOptions {
            engines: Engines::builtin(),
            fetch_missing: false,
            model_bytes,
            adapter_bytes,
            events: Some(tx),
        };
        let inner = SdkAssistant::new(manifest, options)
            .await
            .map_err(sdk_error)?;
        Ok(Assistant {
            inner,
            running: Rc::default(),
            next: Rc::default(),
        })
    }

    /// Classifies a message without generating: `{label, top, confidence,
    /// below_threshold, best_local, scores: [{label, probability}], strategy, ms}`.
    pub fn route(&self, text: String) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let d = inner.route(&text).await.map_err(sdk_error)?;
            Ok(to_js(&d))
        })
    }

    /// Answers `text`: routes it, streams the specialist's answer to
    /// `onToken(piece)`, resolves to `{decision, handler, text,
    /// finish_reason, incomplete, usage, total_ms}`. `options`:
    /// `{specialist, maxTokens, temperature, topK, topP, minP,
    /// repetitionPenalty, presencePenalty, frequencyPenalty, seed, stop,
    /// jsonSchema, jsonObject, regex, grammar, logprobs, topLogprobs}` (the
    /// SDK's `AskOptions`; snake_case works too, an unknown key or two
    /// constraints are an error). A constraint is enforced while the
    /// answer is generated, in the page as everywhere. `finish_reason` is `cancelled` after [`Assistant::cancel`].
    pub fn ask(&self, text: String, on_token: Option<Function>, options: JsValue) -> Promise {
        let inner = self.inner.clone();
        let running = self.running.clone();
        let id = self.next.get();
        self.next.set(id + 1);
        future_to_promise(async move {
            let options: AskOptions = if options.is_undefined() || options.is_null() {
                AskOptions::default()
            } else {
                serde_wasm_bindgen::from_value(options)
                    .map_err(|e| JsError::new(&format!("invalid_argument: options: {e}")))?
            };
            let request = options
                .request(text)
                .map_err(|e| JsError::new(&format!("invalid_argument: options: {e}")))?;
            let cancel = request.cancel.clone();
            running.borrow_mut().push((id, cancel));
            // A page has one thread: the wrapper only satisfies the SDK's
            // Send bound (and would panic if that ever changed).
            let on_token = SendWrapper::new(on_token);
            let result = inner
                .ask(request, move |piece| {
                    if let Some(f) = on_token.as_ref()
                        && let Err(e) = f.call1(&JsValue::NULL, &JsValue::from_str(piece))
                    {
                        tracing::warn!(error = ?e, "onToken threw");
                    }
                })
                .await;
            running.borrow_mut().retain(|(i, _)| *i != id);
            Ok(to_js(&result.map_err(sdk_error)?))
        })
    }

    /// Stops every answer being generated; each resolves with what it had,
    /// `finish_reason: "cancelled"`.
    pub fn cancel(&self) {
        for (_, c) in self.running.borrow().iter() {
            c.cancel();
        }
    }

    /// `{plan, strategy, threshold, cloud, specialists, memory: {budget_bytes,
    /// resident_bytes, models: [{model, engine, device, state, bytes, ...}]}}`.
    pub fn status(&self) -> JsValue {
        to_js(&self.inner.status())
    }

    /// The specialists' names (the gateway's labels, besides `cloud`).
    pub fn specialists(&self) -> Vec<String> {
        self.inner.specialist_names()
    }

    /// Unloads models idle past the manifest's `idle_unload_secs`; call it
    /// from a timer (a page has no background thread to do it).
    #[wasm_bindgen(js_name = unloadIdle)]
    pub fn unload_idle(&self) -> usize {
        self.inner.unload_idle()
    }
}
