//! The mutation campaigns: randomly damaged copies of a real model file,
//! each run through `arny generate` as a user would run it. A damaged
//! download must end in one typed error line (or, when the damage is
//! harmless, an answer), never an abort, a panic or a hang.
//!
//! Two files: the default model's GGUF, and (with the `pte` feature) the
//! ExecuTorch program exported from the tiny model, which has every part a
//! program has (flatbuffer, XNNPACK delegate blob, constant segment) in
//! 0.7 MB where the default model's fp32 program is 540 MB. The program
//! sits beside its export record, as `arny export` leaves it.
//!
//! `ARNY_MUTANTS` sets how many per campaign (CI runs short campaigns; the
//! README's figures come from `ARNY_MUTANTS=10000`), `ARNY_MUTANT_SEED`
//! which ones, `ARNY_MUTANT_JOBS` how many run at once and
//! `ARNY_MUTANT_REPORT` where the JSON summary goes (`-gguf`/`-pte` is
//! added to its name). A failing mutant is kept beside the report so it can
//! be replayed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const ARNY: &str = env!("CARGO_BIN_EXE_arny");
/// A load plus one token takes well under a second; this is a hang.
const HANG: Duration = Duration::from_secs(60);
/// Where mutations land: the header, the metadata (the vocabulary and the
/// merges) and the first tensors.
const HEAD: usize = 2 << 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: reproducible from the seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One way to damage a file, described for the report.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) -> String {
    let head = HEAD.min(bytes.len());
    match rng.below(10) {
        // Random bytes.
        0..=4 => {
            let n = 1 + rng.below(16);
            let at = rng.below(head - n);
            for b in &mut bytes[at..at + n] {
                *b = rng.next() as u8;
            }
            format!("{n} random bytes at {at}")
        }
        // One field set to a value parsers trip on.
        5..=8 => {
            let at = rng.below(head - 8);
            let (what, value): (&str, Vec<u8>) = match rng.below(9) {
                0 => ("u32 0", 0u32.to_le_bytes().into()),
                1 => ("u32 max", u32::MAX.to_le_bytes().into()),
                2 => ("u32 2^31", (1u32 << 31).to_le_bytes().into()),
                3 => ("u32 +1", {
                    let v = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
                    v.wrapping_add(1).to_le_bytes().into()
                }),
                4 => ("u64 max", u64::MAX.to_le_bytes().into()),
                5 => ("u64 2^40", (1u64 << 40).to_le_bytes().into()),
                6 => ("f32 NaN", f32::NAN.to_le_bytes().into()),
                7 => ("f32 -1", (-1.0f32).to_le_bytes().into()),
                _ => ("f32 inf", f32::INFINITY.to_le_bytes().into()),
            };
            bytes[at..at + value.len()].copy_from_slice(&value);
            format!("{what} at {at}")
        }
        // A download cut short.
        _ => {
            let len = rng.below(bytes.len());
            bytes.truncate(len);
            format!("truncated to {len} bytes")
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// The damage was harmless: an answer came out.
    Answered,
    /// One `error: …` line and exit code 1.
    TypedError,
    Abort,
    Panic,
    Hang,
    /// Exit code, output or anything else not of the kinds above.
    Unclear,
}

fn run(model: &Path, engine: &str) -> (Outcome, String) {
    let mut child = Command::new(ARNY)
        .args(["generate", "--engine", engine])
        .args(["--max-tokens", "1", "--threads", "1", "--ctx", "64"])
        .arg("--model")
        .arg(model)
        .args(["--raw", "Hi"])
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn arny");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > HANG {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let err = reader.join().unwrap_or_default();
    let Some(status) = status else {
        return (Outcome::Hang, err);
    };
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    let outcome = match status.code() {
        None => Outcome::Abort,
        Some(_) if err.contains("internal error") || err.contains("panicked") => Outcome::Panic,
        Some(0) => Outcome::Answered,
        Some(1) if lines.len() == 1 && lines[0].starts_with("error: ") => Outcome::TypedError,
        Some(_) => Outcome::Unclear,
    };
    (outcome, err)
}

fn model_path() -> PathBuf {
    let out = Command::new(ARNY)
        .args(["models", "path"])
        .output()
        .expect("arny models path");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn damaged_models_fail_with_a_typed_error_never_an_abort() {
    campaign("gguf", &model_path(), env_usize("ARNY_MUTANTS", 120));
}

/// The tiny model's fp32 program, exported on first use.
#[cfg(feature = "pte")]
#[test]
fn damaged_programs_fail_with_a_typed_error_never_an_abort() {
    let program = arny_pte_export::cached_export(
        &arny_conformance::tiny_gguf(),
        arny_pte_export::PteQuant::Fp32,
        256,
        &mut |_| {},
    )
    .unwrap_or_else(|e| panic!("exporting the tiny model: {e}"));
    campaign("pte", &program, env_usize("ARNY_MUTANTS", 60));
}

/// Damages `model` `count` times and runs each copy on `engine`. The copy
/// sits in a folder of its own beside copies of the files next to the
/// original (a program's tokenizer and template).
fn campaign(engine: &str, model: &Path, count: usize) {
    let seed = env_usize("ARNY_MUTANT_SEED", 1) as u64;
    let jobs = env_usize("ARNY_MUTANT_JOBS", 2).max(1);
    let original = std::fs::read(model).expect("the model to damage");
    let file_name = model.file_name().expect("a file name").to_owned();
    let siblings: Vec<PathBuf> = std::fs::read_dir(model.parent().expect("a folder"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.file_name() != Some(&file_name))
        .collect();
    // A program's export record vouches for its bytes (the engine checks
    // its SHA-256). `ARNY_MUTANT_NO_RECORD=1` leaves it out, to see what a
    // damaged program from elsewhere does to the runtime itself.
    let no_record = std::env::var_os("ARNY_MUTANT_NO_RECORD").is_some_and(|v| v == "1");
    let siblings: Vec<PathBuf> = siblings
        .into_iter()
        .filter(|p| engine != "gguf" && !(no_record && p.ends_with("arny-export.json")))
        .collect();
    // tmpfs when there is one: writing 100 MB per mutant to disk is most
    // of the campaign's time otherwise.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let report = std::env::var_os("ARNY_MUTANT_REPORT")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("arny-mutants.json"));
    let report = report.with_file_name(format!(
        "{}-{engine}.json",
        report.file_stem().unwrap_or_default().to_string_lossy()
    ));
    let kept = report.with_extension("failures");
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for job in 0..jobs {
            let (original, next, results, dir, kept) = (&original, &next, &results, &dir, &kept);
            let (file_name, siblings) = (&file_name, &siblings);
            s.spawn(move || {
                let folder = dir.path().join(format!("job-{job}"));
                std::fs::create_dir_all(&folder).unwrap();
                for p in siblings {
                    std::fs::copy(p, folder.join(p.file_name().unwrap())).unwrap();
                }
                let file = folder.join(file_name);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let mut rng = Rng(seed.wrapping_mul(1_000_003) ^ (i as u64 + 1) << 1 | 1);
                    let mut bytes = original.clone();
                    let what = mutate(&mut rng, &mut bytes);
                    std::fs::write(&file, &bytes).unwrap();
                    let (outcome, err) = run(&file, engine);
                    if outcome > Outcome::TypedError {
                        std::fs::create_dir_all(kept).unwrap();
                        std::fs::copy(&file, kept.join(format!("mutant-{i}.{engine}"))).ok();
                    }
                    let first = err
                        .lines()
                        .next()
                        .unwrap_or("")
                        .replace(&*file.to_string_lossy(), "<mutant>");
                    results.lock().unwrap().push((i, what, outcome, first));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|r| r.0);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    // The distinct errors, by their text up to the first digit or quote:
    // how many kinds of typed error the campaign found.
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, outcome, first) in &results {
        *counts.entry(format!("{outcome:?}")).or_default() += 1;
        if *outcome == Outcome::TypedError {
            let kind: String = first
                .chars()
                .take_while(|c| !c.is_ascii_digit() && *c != '`' && *c != '"')
                .collect();
            *errors.entry(kind.trim().to_string()).or_default() += 1;
        }
    }
    let bad: Vec<String> = results
        .iter()
        .filter(|r| r.2 > Outcome::TypedError)
        .map(|(i, what, outcome, first)| format!("mutant {i} ({what}): {outcome:?}: {first}"))
        .collect();
    let summary = serde_json::json!({
        "engine": engine,
        "file": model.file_name().map(|n| n.to_string_lossy().into_owned()),
        "file_bytes": original.len(),
        "export_record": engine == "pte" && !no_record,
        "mutants": count,
        "seed": seed,
        "jobs": jobs,
        "seconds": started.elapsed().as_secs_f64(),
        "outcomes": counts,
        "typed_errors": errors,
        "failures": bad,
    });
    std::fs::write(&report, serde_json::to_string_pretty(&summary).unwrap()).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&summary).unwrap());
    assert!(
        bad.is_empty(),
        "{} of {count} mutants did not end in an answer or one typed error (kept in {}):\n{}",
        bad.len(),
        kept.display(),
        bad.join("\n")
    );
}
