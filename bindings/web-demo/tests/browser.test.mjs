// The web demo in Debian's Chromium, driven by playwright-core, on both of
// the page's paths: WebGPU (Chromium's SwiftShader adapter when the machine
// has no GPU) and the CPU backend. Each path loads a model in the page,
// asks a math question (the real model's math specialist is its LoRA
// adapter) and a wellness question through the UI, stops an answer
// mid-stream and saves a screenshot under tests/artifacts/. The CPU path
// runs the real model and checks what it answers; the WebGPU path runs the
// generated tiny model with Q4_1 blocks (`arny models tiny --storage
// q4_1`), because SwiftShader decodes the real one at a token per ~10 s:
// it checks the plumbing (WebGPU adapter, load, streaming, routing labels,
// stop) and that Chromium compiles and runs the packed-weight shaders; the
// real model's GPU shaders are checked natively on lavapipe by the
// engine's tests.
// Even the tiny model takes ~1.7 s per token there (every new sequence
// length compiles new kernels), so its answers are capped at 32 tokens.
//
// Needs `arny` built (ARNY_BIN, else $CARGO_TARGET_DIR/release/arny) and the
// wasm package in ../pkg (scripts/build-web.sh). Run: npm test.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../../..");
const artifacts = join(here, "artifacts");
const arny =
  process.env.ARNY_BIN ||
  join(process.env.CARGO_TARGET_DIR || join(repo, "target"), "release", "arny");
// Loading and answering on a software GPU or in wasm takes minutes, not
// seconds; these bound a hang, they do not measure speed.
const LOAD_MS = 10 * 60_000;
const ANSWER_MS = 10 * 60_000;

// Flags measured on this kind of machine: no sandbox as root, and nothing
// that reaches for the network at start.
const FLAGS = [
  "--no-sandbox",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const servers = [];
// Page address by model: "real" (the default model), "tiny".
const base = {};

// Starts `arny web` on a free port serving `model` (default: the default
// model); resolves to the page's address.
function serve(extra) {
  const server = spawn(arny, ["web", "--port", "0", "--dir", resolve(here, ".."), ...extra], {
    stdio: ["ignore", "inherit", "pipe"],
  });
  servers.push(server);
  return new Promise((ok, fail) => {
    let err = "";
    server.on("exit", (code) => fail(new Error(`arny web exited (${code}): ${err}`)));
    server.stderr.on("data", (chunk) => {
      err += chunk;
      const m = /on (http:\/\/127\.0\.0\.1:\d+\/)/.exec(err);
      if (m) ok(m[1]);
    });
  });
}

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  const tiny = execFileSync(arny, ["models", "tiny", "--storage", "q4_1"], {
    encoding: "utf8",
  }).trim();
  base.real = await serve([]);
  base.tiny = await serve(["--model", tiny]);
});

after(() => servers.forEach((s) => s.kill()));

async function open(device) {
  const args = device === "gpu" ? [...FLAGS, "--enable-unsafe-webgpu"] : FLAGS;
  // launch() starts Chromium with a fresh, empty profile directory.
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args });
  const page = await browser.newPage({ viewport: { width: 900, height: 1100 } });
  // A busy page (kernels compiling on a software GPU) answers slowly to
  // every query, not just to the waits that expect it.
  page.setDefaultTimeout(ANSWER_MS);
  const console_ = [];
  page.on("console", (m) => console_.push(`[${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => console_.push(`[pageerror] ${e.message}`));
  return { browser, page, console_ };
}

// Sends `text` through the form; returns the new answer's element handle
// index (answers are numbered in order).
async function send(page, text) {
  const n = await page.locator(".msg.assistant").count();
  await page.fill("#prompt", text);
  await page.click("#send", { timeout: ANSWER_MS });
  // The first answer on a software GPU keeps the page busy compiling
  // kernels for a while, so even the new message may take time to show.
  await page.locator(".msg.assistant").nth(n).waitFor({ timeout: ANSWER_MS });
  return page.locator(".msg.assistant").nth(n);
}

async function waitDone(msg) {
  await msg.page().waitForFunction((el) => el.dataset.done === "true", await msg.elementHandle(), {
    timeout: ANSWER_MS,
  });
}

// The threaded build (pkg-threads) is built wherever the nightly toolchain
// is (scripts/build-web.sh); ARNY_WEB_THREADS=0 says it was not.
const threaded = process.env.ARNY_WEB_THREADS !== "0";
if (threaded) {
  assert.ok(
    existsSync(join(here, "../pkg-threads/arny_wasm_bg.wasm")),
    "pkg-threads is built (scripts/build-web.sh; ARNY_WEB_THREADS=0 if it cannot be)",
  );
}
// The page starts a worker per core beyond its own; Chromium reports the
// machine's cores.
const cores = (await import("node:os")).availableParallelism();
const expectedThreads = threaded ? Math.min(cores, 8) : 1;

// Workers split each matmul's rows, and every row is computed the same way
// on whichever thread takes it: a greedy answer must not change with the
// thread count, token for token.
test("the CPU path's greedy answer is the same on one thread and on several", { timeout: 2 * LOAD_MS + 2 * ANSWER_MS, skip: !threaded && "pkg-threads not built" }, async () => {
  const answers = {};
  for (const n of [0, 1]) {
    const { browser, page, console_ } = await open("cpu");
    try {
      await page.goto(`${base.real}?device=cpu&threads=${n}`);
      await page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state), null, {
        timeout: LOAD_MS,
      });
      assert.equal(await page.evaluate(() => document.body.dataset.state), "ready", await page.locator("#error").textContent());
      assert.equal(await page.evaluate(() => document.body.dataset.threads), String(n + 1));
      const a = await page.evaluate(async () => {
        const a = await window.arny.ask("What is 20% of 80? Show the steps.", null, {
          specialist: "math", temperature: 0, maxTokens: 48,
        });
        return { text: a.text, usage: a.usage };
      });
      answers[n + 1] = a;
      console.log(`[cpu, ${n + 1} threads] decode ${a.usage.decode_tok_s.toFixed(1)} tok/s, prefill ${a.usage.prefill_tok_s.toFixed(1)} tok/s: ${a.text.slice(0, 80)}…`);
    } catch (e) {
      console.error(console_.slice(-60).join("\n"));
      throw e;
    } finally {
      await browser.close();
    }
  }
  const [one, many] = Object.values(answers);
  assert.ok(one.text.length > 0);
  assert.equal(many.text, one.text, "the same greedy answer on every thread count");
});

for (const [device, model] of [["gpu", "tiny"], ["cpu", "real"]]) {
  test(`chat in the page on ${device === "gpu" ? "WebGPU (tiny model)" : "the CPU backend (real model)"}`, { timeout: LOAD_MS + 3 * ANSWER_MS }, async () => {
    const { browser, page, console_ } = await open(device);
    // Phase times go to the log: on a software GPU they show where a slow
    // run spends its time (load, first answer with kernel compiles, rest).
    const t0 = Date.now();
    const phases = [];
    const mark = (name) => phases.push(`${name} ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    try {
      // The GPU page runs the single-threaded build (its CPU work is small),
      // the CPU page the threaded one where it was built.
      await page.goto(`${base[model]}?device=${device}${model === "tiny" ? "&max_tokens=32&threads=0" : ""}`);
      if (device === "gpu") {
        // navigator.gpu exists only in a secure context, such as loopback.
        const adapter = await page.evaluate(async () => !!(navigator.gpu && (await navigator.gpu.requestAdapter())));
        assert.ok(adapter, "--enable-unsafe-webgpu gives a WebGPU adapter");
      }
      await page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state), null, {
        timeout: LOAD_MS,
      });
      const error = await page.locator("#error").textContent();
      assert.equal(await page.evaluate(() => document.body.dataset.state), "ready", `page failed: ${error}`);
      mark("ready");
      const used = await page.locator("#device").getAttribute("data-device");
      if (device === "gpu") assert.match(used, /^wgpu: /, `WebGPU path, got ${used}`);
      else assert.match(used, /^cpu/, `CPU path, got ${used}`);
      const threads = await page.evaluate(() => document.body.dataset.threads);
      assert.equal(threads, device === "cpu" ? String(expectedThreads) : "1", "CPU threads in the page");

      // Math: the whole streamed answer. On the real model the math
      // specialist is the shipped LoRA adapter, run by Burn in wasm, and
      // it answers 16; the tiny model's answer is noise, but it streams
      // and ends.
      const math = await send(page, model === "real" ? "What is 20% of 80?" : "What is 2+2?");
      await waitDone(math);
      mark("math answered");
      const mathText = await math.locator(".text").textContent();
      assert.equal(await math.getAttribute("data-label"), "math");
      if (model === "real") {
        assert.match(mathText, /\b16\b/, `the answer has 16: ${mathText}`);
        const adapters = await page.evaluate(() => document.body.dataset.adapters ?? "");
        assert.match(adapters, /math:.*math-smollm2-135m/, `the math adapter was loaded: ${adapters}`);
      } else assert.ok(mathText.length > 0, "the tiny model streamed an answer");
      assert.notEqual(await math.getAttribute("data-finish"), "error", mathText);

      // Wellness, stopped mid-stream: after a few pieces on the real model;
      // on the tiny model after the first, since its answer is capped and a
      // page busy compiling kernels may take seconds to deliver the click.
      const well = await send(page, "I feel anxious and can't sleep at night");
      await page.waitForFunction(
        ({ el, min }) => el.querySelector(".text").textContent.length >= min,
        { el: await well.elementHandle(), min: model === "tiny" ? 1 : 12 },
        { timeout: ANSWER_MS },
      );
      await page.click("#stop", { timeout: ANSWER_MS });
      await waitDone(well);
      mark("wellness stopped");
      assert.equal(await well.getAttribute("data-label"), "wellness");
      assert.equal(await well.getAttribute("data-finish"), "cancelled");
      const stopped = await well.locator(".text").textContent();
      await page.waitForTimeout(1500);
      assert.equal(await well.locator(".text").textContent(), stopped, "nothing streams after stop");
      assert.equal(await page.evaluate(() => document.body.dataset.state), "ready");

      // Structured output through the JS API: a JSON Schema enforced in
      // the page. On the tiny model's random weights only the mask can
      // make the answer valid.
      const structured = await page.evaluate(async () => {
        const schema = {
          type: "object",
          properties: { city: { type: "string", maxLength: 20 }, sunny: { type: "boolean" } },
          required: ["city", "sunny"],
          additionalProperties: false,
        };
        const a = await window.arny.ask("What is the capital of France? Reply in JSON.", null, {
          specialist: "math", temperature: 0, maxTokens: 96, jsonSchema: schema,
        });
        let refused = "";
        try {
          await window.arny.ask("hi", null, { specialist: "math", jsonSchema: { type: "object", not: {} } });
        } catch (e) {
          refused = String(e.message || e);
        }
        return { text: a.text, incomplete: a.incomplete, finish: a.finish_reason, refused };
      });
      mark("structured");
      assert.equal(structured.incomplete, false, JSON.stringify(structured));
      const obj = JSON.parse(structured.text);
      assert.deepEqual(Object.keys(obj).sort(), ["city", "sunny"], structured.text);
      assert.ok(typeof obj.city === "string" && obj.city.length <= 20 && typeof obj.sunny === "boolean", structured.text);
      assert.match(structured.refused, /^invalid_constraint: .*"not"/, structured.refused);

      await page.screenshot({ path: join(artifacts, `web-demo-${device}.png`), fullPage: true });
      const mathMeta = await math.locator(".meta").textContent();
      console.log(`[${device}, ${model} model, ${threads} CPU threads] ${used}; ${phases.join(", ")}\n  math (${mathMeta}): ${mathText.slice(0, 120)}…\n  wellness (stopped): ${stopped}\n  structured: ${structured.text}`);
    } catch (e) {
      await page.screenshot({ path: join(artifacts, `web-demo-${device}-failed.png`), fullPage: true }).catch(() => {});
      console.error(console_.slice(-60).join("\n"));
      throw e;
    } finally {
      writeFileSync(join(artifacts, `console-${device}.log`), console_.join("\n") + "\n");
      await browser.close();
    }
  });
}
