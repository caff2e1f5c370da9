// The web demo: Arny's SDK (bindings/wasm) running in the page. `arny web`
// serves this folder, the wasm package in pkg/, the manifest at arny.toml
// and the model it names.
//
// The page's state is mirrored in data attributes (body[data-state], each
// answer's data-label / data-done / data-finish) so tests can wait on them.

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const device = params.get("device") || "auto";
// Worker threads for the CPU path beside the page's own (`?threads=0`: one
// thread in all). They need the threaded build and a cross-origin isolated
// page (`arny web` sends the headers); otherwise the page loads pkg/.
const threads = params.has("threads")
  ? Number(params.get("threads"))
  : Math.max(0, Math.min(navigator.hardwareConcurrency || 1, 8) - 1);
const pkgParam = params.get("pkg");
let arnyWasm = null;
// Caps every answer (for slow devices); the specialist's own limit otherwise.
const maxTokens = Number(params.get("max_tokens")) || undefined;
let assistant = null;

function setState(state) {
  document.body.dataset.state = state;
  const ready = state === "ready";
  $("prompt").disabled = !ready;
  $("send").disabled = !ready;
  $("stop").disabled = state !== "generating";
}

function progress(label, fraction) {
  $("progress-label").textContent = label;
  if (fraction == null) $("progress").removeAttribute("value");
  else $("progress").value = fraction;
}

function fail(e) {
  const msg = e && e.message ? e.message : String(e);
  console.error(e);
  $("error").textContent = msg;
  $("error").hidden = false;
  setState("error");
}

const mib = (n) => (n / (1 << 20)).toFixed(1);
// The routing decision for the request in flight: the gateway emits it
// before the first token.
let pending = null;

function onEvent(e) {
  switch (e.event) {
    case "download": {
      const what = e.model ?? `adapter ${e.adapter}`;
      progress(
        e.total
          ? `Downloading ${what}: ${mib(e.loaded)} of ${mib(e.total)} MiB`
          : `Downloading ${what}: ${mib(e.loaded)} MiB`,
        e.total ? e.loaded / e.total : null,
      );
      break;
    }
    case "adapter_loaded": {
      // Specialists tuned as LoRA adapters over the one resident model;
      // listed on the body for the page's tests.
      const loaded = (document.body.dataset.adapters ?? "").split(" ").filter(Boolean);
      loaded.push(`${e.specialist}:${e.adapter}`);
      document.body.dataset.adapters = loaded.join(" ");
      progress(`Loaded the ${e.specialist} adapter (${mib(e.bytes)} MiB in ${Math.round(e.ms)} ms)`, 1);
      break;
    }
    case "loading":
      progress(`Loading ${e.model}…`, 0);
      break;
    case "load_progress":
      progress(`Loading ${e.model}: ${Math.round(e.fraction * 100)}%`, e.fraction);
      break;
    case "loaded":
      progress(`Loaded ${e.model} (${mib(e.bytes)} MiB in ${Math.round(e.ms)} ms)`, 1);
      break;
    case "routed":
      if (pending) showRoute(pending, e.label, e.confidence, e.handler);
      break;
  }
}

function showRoute(msg, label, confidence, handler) {
  const badge = msg.querySelector(".route");
  badge.dataset.label = label;
  badge.textContent = `${label} · ${Math.round(confidence * 100)}%`;
  badge.title = `answered by ${handler}`;
  msg.dataset.label = label;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  if (role === "assistant") {
    div.innerHTML = '<span class="route">routing…</span><div class="text"></div><div class="meta"></div>';
    div.dataset.done = "false";
  } else {
    div.textContent = text;
  }
  $("log").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

async function ask(text) {
  addMessage("user", text);
  const msg = addMessage("assistant");
  const out = msg.querySelector(".text");
  pending = msg;
  setState("generating");
  // Let the page paint the question before the model takes the thread.
  await new Promise((r) => setTimeout(r, 20));
  try {
    // Scrolled once a frame, not per token: scrollIntoView lays the page
    // out, which on the CPU path costs the decoder time.
    let scrollQueued = false;
    const answer = await assistant.ask(text, (piece) => {
      out.textContent += piece;
      if (!scrollQueued) {
        scrollQueued = true;
        requestAnimationFrame(() => {
          scrollQueued = false;
          msg.scrollIntoView({ block: "end" });
        });
      }
    }, { maxTokens });
    if (answer.decision) {
      showRoute(msg, answer.decision.label, answer.decision.confidence, answer.handler.name || answer.handler.model);
    }
    const u = answer.usage;
    msg.querySelector(".meta").textContent = u
      ? `${answer.finish_reason} · ${u.generated_tokens} tokens · prefill ${u.prefill_tok_s.toFixed(1)} tok/s · decode ${u.decode_tok_s.toFixed(1)} tok/s · first token ${Math.round(u.ttft_ms)} ms`
      : answer.finish_reason;
    msg.dataset.finish = answer.finish_reason;
  } catch (e) {
    msg.dataset.finish = "error";
    out.textContent += `\n[error] ${e.message || e}`;
  } finally {
    pending = null;
    msg.dataset.done = "true";
    setState("ready");
    $("prompt").focus();
  }
}

// A WebGPU adapter that can run Burn's kernels (they need `subgroups`),
// not a software fallback: what `auto` would run on.
async function webgpuUsable() {
  try {
    const a = navigator.gpu && (await navigator.gpu.requestAdapter());
    return !!a && a.features.has("subgroups") && !a.isFallbackAdapter && !(a.info && a.info.isFallbackAdapter);
  } catch {
    return false;
  }
}

// The threaded build (CPU only) where the page runs on the CPU and can
// share memory with workers; else, or when it was not built, pkg/
// (WebGPU and one CPU thread).
async function loadPackage() {
  const gpu = device === "gpu" || (device === "auto" && (await webgpuUsable()));
  // `?pkg=threads`: the threaded build even with `threads=0` (to measure it).
  const wanted = pkgParam === "threads" || threads > 0;
  if (!gpu && wanted && globalThis.crossOriginIsolated) {
    try {
      const pkg = await import("./pkg-threads/arny_wasm.js");
      await pkg.default();
      return pkg;
    } catch (e) {
      console.warn("threaded build unavailable, using one thread:", e);
    }
  }
  const pkg = await import("./pkg/arny_wasm.js");
  await pkg.default();
  return pkg;
}

async function main() {
  setState("loading");
  // A knob the page cannot honour is an error, not a silent default.
  if (!Number.isInteger(threads) || threads < 0) {
    throw new Error(`invalid_request: ?threads=${params.get("threads")} (a whole number of workers, 0 or more)`);
  }
  if (pkgParam !== null && pkgParam !== "threads") {
    throw new Error(`invalid_request: ?pkg=${pkgParam} (only "threads")`);
  }
  progress("Starting the WebAssembly module…", null);
  arnyWasm = await loadPackage();
  const { Assistant, initLogging, webgpuAdapter } = arnyWasm;
  initLogging("info");
  let running = 0;
  if (threads > 0 && arnyWasm.threadsSupported()) {
    running = await arnyWasm.startThreads(threads).catch((e) => {
      console.warn("no worker threads:", e);
      return 0;
    });
  }
  document.body.dataset.threads = String(running + 1);
  const adapter = await webgpuAdapter().catch(() => null);
  console.info("WebGPU adapter:", adapter);
  const manifest = await (await fetch("arny.toml")).text();
  assistant = await Assistant.create(manifest, { device, onEvent });
  // The SDK's JS API, for the console and the page's tests.
  window.arny = assistant;
  const model = assistant.status().memory.models[0];
  $("device").textContent = `engine: ${model.engine} · device: ${model.device} · requested: ${device} · CPU threads: ${running + 1}`;
  $("device").dataset.device = model.device;
  setState("ready");
  $("prompt").focus();
}

$("ask").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || !assistant || document.body.dataset.state !== "ready") return;
  $("prompt").value = "";
  // Start after this event returns: the first answer on a slow GPU compiles
  // many kernels, and the click should not wait for that.
  setTimeout(() => ask(text), 0);
});
$("stop").addEventListener("click", () => assistant && assistant.cancel());

main().catch(fail);
