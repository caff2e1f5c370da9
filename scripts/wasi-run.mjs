// Runs a wasm32-wasip1 program (a cargo test binary) under Node's WASI,
// with the host's file system at / and the caller's environment, and exits
// with its status: cargo's runner for scripts/test-wasm-kernels.sh.
//
//   node --single-threaded-gc scripts/wasi-run.mjs PROGRAM.wasm [ARGS...]
//
// --single-threaded-gc: Node 20 crashed (SIGSEGV) at exit after a test had
// grown the module's memory past ~1 GB, with the tests already passed; the
// crash is in its GC threads' teardown and does not happen without them.
import { WASI } from 'node:wasi';
import fs from 'node:fs';

const [program, ...args] = process.argv.slice(2);
const wasi = new WASI({
  version: 'preview1',
  args: [program, ...args],
  env: process.env,
  preopens: { '/': '/' },
  returnOnExit: true,
});
const module = await WebAssembly.compile(fs.readFileSync(program));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);
