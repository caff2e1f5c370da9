//! The load test: `arny serve` with three specialists on three distinct
//! copies of the real model, a memory budget that fits two, and many
//! streamed requests at once over loopback, some of whose clients go away
//! mid-stream or before the first byte. Every request that stays must end
//! in a complete stream (`[DONE]` after a finish reason), and the server's
//! peak RSS must stay within the budget plus a fixed runtime overhead.
//!
//! `ARNY_LOAD_REQUESTS` (CI runs a short test; the README's figures come
//! from 1000) and `ARNY_LOAD_CONCURRENCY` size it; `ARNY_LOAD_REPORT` is
//! where the JSON summary goes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const ARNY: &str = env!("CARGO_BIN_EXE_arny");
const MIB: u64 = 1 << 20;
/// What the process holds besides the budget: the binary's code and data,
/// the tokio and llama.cpp thread pools, allocator slack, the tokenizer
/// and router tables. The README states the same figure.
const RUNTIME_OVERHEAD: u64 = 64 * MIB;
/// Two of the three models' weights plus the sessions of four generations
/// at once (see `budget`).
const SPECIALISTS: [&str; 3] = ["math", "wellness", "logistics"];
const PROMPTS: [&str; 3] = [
    "What is 12 times 7?",
    "I feel stressed before exams. Any advice?",
    "Plan a route for three deliveries across town.",
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn model_path() -> std::path::PathBuf {
    let out = Command::new(ARNY)
        .args(["models", "path"])
        .output()
        .expect("arny models path");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().into()
}

/// Kills the server however the test ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn start(dir: &Path, budget: u64, max_concurrent: usize) -> (Server, String) {
    let model = model_path();
    let mut manifest = format!("memory_budget = \"{budget}\"\nqueue_timeout_secs = 120\n\n");
    for (i, s) in SPECIALISTS.iter().enumerate() {
        // Copies, not links: three files llama.cpp maps separately.
        let file = dir.join(format!("{s}.gguf"));
        std::fs::copy(&model, &file).unwrap();
        manifest.push_str(&format!(
            "[[models]]\nid = \"{s}-model\"\nengine = \"gguf\"\npath = \"{s}.gguf\"\ncontext_length = 512\nthreads = 1\n\n\
             [[specialists]]\nname = \"{s}\"\nmodel = \"{s}-model\"\nsystem_prompt = \"You answer briefly.\"\n\
             temperature = 0\nexamples = [{:?}, {:?}]\n\n",
            PROMPTS[i],
            format!("Another question for {s}")
        ));
    }
    let path = dir.join("arny.toml");
    std::fs::write(&path, manifest).unwrap();
    let mut child = Command::new(ARNY)
        .args(["serve", "--port", "0", "--max-concurrent"])
        .arg(max_concurrent.to_string())
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn arny serve");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut log = String::new();
    let addr = loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "arny serve exited before listening:\n{log}"
        );
        log.push_str(&line);
        if let Some(rest) = line.trim().strip_prefix("arny serve: listening on http://") {
            break rest.trim_end_matches("/v1").to_string();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while err.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    (Server(child), addr)
}

fn rss(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// What a client does with its stream.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Client {
    /// Reads it to `[DONE]`.
    Stays,
    /// Goes away after the first piece of text.
    LeavesMidStream,
    /// Sends the request and goes away at once (while it is still queued).
    LeavesAtOnce,
}

#[derive(Debug)]
enum Result {
    Complete {
        ms: f64,
        finish: String,
        pieces: usize,
    },
    Left,
    /// 429: the queue was full; retried after `Retry-After`.
    Retry(u64),
    Failed(String),
}

fn request(addr: &str, specialist: &str, prompt: &str, client: Client, max_tokens: u32) -> Result {
    let body = serde_json::json!({
        "model": specialist,
        "stream": true,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    })
    .to_string();
    let started = Instant::now();
    let mut s = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return Result::Failed(format!("connect: {e}")),
    };
    s.set_read_timeout(Some(Duration::from_secs(300))).ok();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = s.write_all(head.as_bytes()) {
        return Result::Failed(format!("send: {e}"));
    }
    if client == Client::LeavesAtOnce {
        return Result::Left;
    }
    let mut r = BufReader::new(s);
    let mut status = String::new();
    if r.read_line(&mut status).is_err() {
        return Result::Failed("no status line".into());
    }
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut chunked = false;
    let mut retry_after = 1;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 {
            return Result::Failed("headers cut".into());
        }
        let h = h.trim().to_ascii_lowercase();
        if h.is_empty() {
            break;
        }
        if h == "transfer-encoding: chunked" {
            chunked = true;
        }
        if let Some(v) = h.strip_prefix("retry-after:") {
            retry_after = v.trim().parse().unwrap_or(1);
        }
    }
    let mut body = Vec::new();
    let mut finish = None;
    let mut pieces = 0;
    let mut done = false;
    // Reads the de-chunked body a chunk at a time, looking at whole lines.
    let mut lines = String::new();
    loop {
        let chunk = if chunked {
            let mut size = String::new();
            if r.read_line(&mut size).unwrap_or(0) == 0 {
                break;
            }
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut buf = vec![0; n + 2];
            if r.read_exact(&mut buf).is_err() {
                break;
            }
            buf.truncate(n);
            buf
        } else {
            let mut buf = vec![0; 4096];
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.truncate(n);
                    buf
                }
            }
        };
        if code != 200 {
            body.extend_from_slice(&chunk);
            continue;
        }
        lines.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = lines.find('\n') {
            let line: String = lines.drain(..=end).collect();
            let Some(data) = line.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let v: serde_json::Value = match serde_json::from_str(data) {
                Ok(v) => v,
                Err(e) => return Result::Failed(format!("bad chunk {data:?}: {e}")),
            };
            if v.get("error").is_some() {
                return Result::Failed(format!("error in the stream: {data}"));
            }
            let choice = &v["choices"][0];
            if choice["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
            {
                pieces += 1;
                if client == Client::LeavesMidStream {
                    return Result::Left;
                }
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
        if done {
            break;
        }
    }
    match code {
        200 => match (done, finish) {
            (true, Some(finish)) => Result::Complete {
                ms: started.elapsed().as_secs_f64() * 1e3,
                finish,
                pieces,
            },
            (done, finish) => Result::Failed(format!(
                "stream ended without [DONE] and a finish reason (done {done}, finish {finish:?})"
            )),
        },
        429 => Result::Retry(retry_after),
        _ => Result::Failed(format!(
            "HTTP {code}: {}",
            String::from_utf8_lossy(&body).trim()
        )),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn many_streams_over_three_models_in_a_budget_for_two() {
    let total = env_usize("ARNY_LOAD_REQUESTS", 90);
    let concurrency = env_usize("ARNY_LOAD_CONCURRENCY", 16);
    let max_tokens = env_usize("ARNY_LOAD_MAX_TOKENS", 12) as u32;
    let max_concurrent = 4;
    let model_bytes = std::fs::metadata(model_path()).unwrap().len();
    // Two models' weights and room for the sessions of the generations
    // running at once, but not a third model.
    let budget = 2 * model_bytes + 100 * MIB;
    assert!(budget < 3 * model_bytes + 40 * MIB);
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = start(dir.path(), budget, max_concurrent);
    let pid = server.0.id();

    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let retries = AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let samples = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                samples.lock().unwrap().push(rss(pid, "VmRSS:"));
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let clients: Vec<_> = (0..concurrency)
            .map(|_| {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            break;
                        }
                        // A mix: mostly readers, one in ten leaving mid-stream,
                        // one in fifteen leaving before the first byte; the
                        // specialist changes often enough to force swaps.
                        let client = if i % 10 == 3 {
                            Client::LeavesMidStream
                        } else if i % 15 == 7 {
                            Client::LeavesAtOnce
                        } else {
                            Client::Stays
                        };
                        let k = (i * 7 / 5) % 3;
                        let result = loop {
                            match request(&addr, SPECIALISTS[k], PROMPTS[k], client, max_tokens) {
                                Result::Retry(secs) => {
                                    retries.fetch_add(1, Ordering::Relaxed);
                                    std::thread::sleep(Duration::from_secs(secs));
                                }
                                r => break r,
                            }
                        };
                        results.lock().unwrap().push((i, client, result));
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        sampler.join().unwrap();
    });
    let seconds = started.elapsed().as_secs_f64();
    let peak = rss(pid, "VmHWM:");
    let results = results.into_inner().unwrap();
    let mut ms: Vec<f64> = Vec::new();
    let mut failures = Vec::new();
    let (mut left, mut pieces_total) = (0, 0);
    let mut finishes = std::collections::BTreeMap::<String, usize>::new();
    for (i, client, r) in &results {
        match r {
            Result::Complete {
                ms: t,
                finish,
                pieces,
            } => {
                ms.push(*t);
                pieces_total += pieces;
                *finishes.entry(finish.clone()).or_default() += 1;
            }
            Result::Left => left += 1,
            Result::Failed(why) => failures.push(format!("request {i} ({client:?}): {why}")),
            Result::Retry(_) => unreachable!("retried above"),
        }
    }
    ms.sort_by(f64::total_cmp);
    // The server must still answer after every client that left.
    let after = request(&addr, "math", PROMPTS[0], Client::Stays, 4);
    let samples = samples.into_inner().unwrap();
    let sampled_max = samples.iter().copied().max().unwrap_or(0);
    // The highest sample in each second: a climb means memory the budget
    // does not see is accumulating, a spike means a moment over it.
    let timeline: Vec<u64> = samples
        .chunks(20)
        .map(|c| c.iter().max().copied().unwrap_or(0) / MIB)
        .collect();
    let status: serde_json::Value = {
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET /v1/status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).ok();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("{}");
        serde_json::from_str(body).unwrap_or_default()
    };
    let summary = serde_json::json!({
        "requests": total,
        "concurrency": concurrency,
        "server_max_concurrent": max_concurrent,
        "max_tokens": max_tokens,
        "complete": ms.len(),
        "left_by_client": left,
        "failed": failures.len(),
        "retried_429": retries.load(Ordering::Relaxed),
        "finish_reasons": finishes,
        "seconds": seconds,
        "requests_per_s": results.len() as f64 / seconds,
        "pieces_per_s": pieces_total as f64 / seconds,
        "latency_ms_p50": percentile(&ms, 0.5),
        "latency_ms_p99": percentile(&ms, 0.99),
        "budget_mib": budget as f64 / MIB as f64,
        "peak_rss_mib": peak as f64 / MIB as f64,
        "sampled_max_rss_mib": sampled_max as f64 / MIB as f64,
        "rss_bound_mib": (budget + RUNTIME_OVERHEAD) as f64 / MIB as f64,
        "models_resident_after": status["memory"]["models"].as_array().map(Vec::len),
        "rss_mib_per_second": timeline,
    });
    let report = std::env::var_os("ARNY_LOAD_REPORT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("arny-load.json"));
    std::fs::write(&report, serde_json::to_string_pretty(&summary).unwrap()).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&summary).unwrap());
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        matches!(after, Result::Complete { .. }),
        "after the load: {after:?}"
    );
    assert_eq!(ms.len() + left, total);
    assert!(
        peak <= budget + RUNTIME_OVERHEAD,
        "peak RSS {} MiB over the budget {} MiB + {} MiB",
        peak / MIB,
        budget / MIB,
        RUNTIME_OVERHEAD / MIB
    );
}
