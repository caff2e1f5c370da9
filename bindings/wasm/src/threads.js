// Wasm threads for the CPU path: module Workers that instantiate the same
// module over the page's shared memory and park in Rust (workerMain),
// where the packed-weight matmuls hand them work. This file is both the
// page-side starter and, loaded as a Worker, the worker itself.

if (typeof WorkerGlobalScope !== "undefined" && globalThis instanceof WorkerGlobalScope) {
  globalThis.onmessage = async ({ data }) => {
    let glue;
    try {
      glue = await import(data.glue);
      glue.initSync({ module: data.module, memory: data.memory });
    } catch (e) {
      postMessage({ ok: false, error: String((e && e.stack) || e) });
      return;
    }
    postMessage({ ok: true });
    // Never returns: the worker sleeps in Rust between jobs.
    glue.workerMain();
  };
}

// Starts `n` workers; resolves when each has instantiated the module.
export function start_workers(n, module, memory) {
  // This file is pkg/snippets/<crate>/src/threads.js; the glue is pkg/arny_wasm.js.
  const glue = new URL("../../../arny_wasm.js", import.meta.url).href;
  const started = [];
  for (let i = 0; i < n; i++) {
    const worker = new Worker(import.meta.url, { type: "module", name: `arny-worker-${i}` });
    started.push(
      new Promise((ok, fail) => {
        worker.onmessage = ({ data }) => (data.ok ? ok() : fail(new Error(data.error)));
        worker.onerror = (e) => fail(new Error(`worker ${i}: ${e.message || "failed to start"}`));
      }),
    );
    worker.postMessage({ glue, module, memory });
  }
  return Promise.all(started);
}
