//! LoRA adapters on the llama.cpp engine, with adapters written here: a
//! seeded random adapter for the default model, checked against the same
//! delta merged into the weights by hand, and the bad inputs an app can
//! hand the engine.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arny_engine_api::{
    Adapter, EngineError, LoadOptions, LogitsRequest, Model, ModelSource, Session as _,
    SessionOptions, next_token_logits,
};
use arny_engine_gguf::{GgufEngine, GgufModel};
use arny_gguf::{GgufFile, GgufWriter, Value, dequant};
use futures::executor::block_on;

const RANK: u64 = 4;
const ALPHA: f32 = 8.0;
/// Size of the random A and B entries: a clear but not chaotic change.
const AMP: f32 = 0.08;
/// The adapted weights: every block's Q and V projections.
const TARGETS: [&str; 2] = ["attn_q", "attn_v"];

fn base_path() -> PathBuf {
    arny_model_store::require_default_model().unwrap_or_else(|e| panic!("{e}"))
}

fn load(path: &Path) -> GgufModel {
    GgufEngine::new()
        .load_path(path, &LoadOptions::default())
        .expect("load model")
}

fn header(path: &Path) -> GgufFile {
    let bytes = std::fs::read(path).unwrap();
    GgufFile::from_bytes(&bytes).unwrap()
}

/// Deterministic values in [-amp, amp].
fn noise(seed: u64, n: usize, amp: f32) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

struct Pair {
    base: String,
    n_in: u64,
    n_out: u64,
    a: Vec<f32>,
    b: Vec<f32>,
}

fn random_pairs(base: &GgufFile, seed: u64) -> Vec<Pair> {
    base.tensors
        .iter()
        .filter(|t| {
            TARGETS
                .iter()
                .any(|k| t.name.ends_with(&format!(".{k}.weight")))
        })
        .enumerate()
        .map(|(i, t)| {
            let (n_in, n_out) = (t.dims[0], t.dims[1]);
            Pair {
                base: t.name.clone(),
                n_in,
                n_out,
                a: noise(seed + 2 * i as u64, (n_in * RANK) as usize, AMP),
                b: noise(seed + 2 * i as u64 + 1, (RANK * n_out) as usize, AMP),
            }
        })
        .collect()
}

fn adapter_file(arch: &str, pairs: &[Pair]) -> GgufWriter {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String(arch.into()))
        .set("general.type", Value::String("adapter".into()))
        .set("adapter.type", Value::String("lora".into()))
        .set("adapter.lora.alpha", Value::F32(ALPHA));
    for p in pairs {
        w.tensor_f32(format!("{}.lora_a", p.base), &[p.n_in, RANK], &p.a);
        w.tensor_f32(format!("{}.lora_b", p.base), &[RANK, p.n_out], &p.b);
    }
    w
}

fn write(w: &GgufWriter, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    w.write(std::fs::File::create(&path).unwrap()).unwrap();
    path
}

/// The base model with `W + alpha/r · B·A` written into each adapted
/// weight (as f32), every other tensor copied as it is.
fn merged_model(base_path: &Path, pairs: &[Pair], dir: &Path, scale: f32, name: &str) -> PathBuf {
    let bytes = std::fs::read(base_path).unwrap();
    let base = GgufFile::from_bytes(&bytes).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &base.metadata {
        w.set(k.clone(), v.clone());
    }
    for t in &base.tensors {
        let data = base.tensor_data(&bytes, t).unwrap();
        match pairs.iter().find(|p| p.base == t.name) {
            None => {
                w.tensor(t.name.clone(), &t.dims, t.ggml_type, data.to_vec());
            }
            Some(p) => {
                let mut m = dequant::dequantize(t.ggml_type, data, t.elements() as usize).unwrap();
                let (n_in, r) = (p.n_in as usize, RANK as usize);
                for o in 0..p.n_out as usize {
                    for k in 0..r {
                        let bk = scale * p.b[o * r + k];
                        let row = &mut m[o * n_in..(o + 1) * n_in];
                        for (x, a) in row.iter_mut().zip(&p.a[k * n_in..(k + 1) * n_in]) {
                            *x += bk * a;
                        }
                    }
                }
                w.tensor_f32(t.name.clone(), &t.dims, &m);
            }
        }
    }
    write(&w, dir, name)
}

fn logits(model: &GgufModel, adapter: Option<Arc<dyn Adapter>>, prompt: &str) -> Vec<f32> {
    let tokens = model.tokenize(prompt, true, true).unwrap();
    let mut s = model
        .session(&SessionOptions {
            adapter,
            ..Default::default()
        })
        .unwrap();
    block_on(next_token_logits(&mut s, &tokens)).unwrap()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

const PROMPTS: [&str; 3] = [
    "<|im_start|>user\nWhat is 30 + 43?<|im_end|>\n<|im_start|>assistant\n",
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
];

/// The adapter does what the math says: over a copy of the model whose
/// adapted weights are f32, it runs like that copy with `W + alpha/r · B·A`
/// merged into the weights. SmolLM2 amplifies float rounding (a change of
/// batching alone moves some logits by tenths), so the comparison is
/// statistical over a teacher-forced text: the adapter must be as close to
/// the merged model as the merged model is to itself evaluated one token at
/// a time, and far from the model without it.
#[test]
fn an_adapter_equals_its_merged_model() {
    let dir = tempfile::tempdir().unwrap();
    let base_path = base_path();
    let pairs = random_pairs(&header(&base_path), 7);
    let file = write(&adapter_file("llama", &pairs), dir.path(), "lora.gguf");
    let plain = load(&merged_model(
        &base_path,
        &pairs,
        dir.path(),
        0.0,
        "f32.gguf",
    ));
    let merged = load(&merged_model(
        &base_path,
        &pairs,
        dir.path(),
        ALPHA / RANK as f32,
        "m.gguf",
    ));
    let adapter = plain
        .adapter(ModelSource::Path(file), 1.0)
        .expect("load adapter");
    let info = adapter.info();
    assert_eq!(info.rank, RANK as u32);
    assert_eq!(info.alpha, Some(ALPHA));
    assert_eq!(info.tensors as usize, pairs.len());
    assert!(plain.info().capabilities.lora);

    let text = "<|im_start|>user\nWhat is 30 + 43? Explain how you add two numbers with carrying, \
                step by step, for a child.<|im_end|>\n<|im_start|>assistant\nFirst write the numbers \
                one above the other, then add the ones: 0 and 3 make 3. Then the tens: 3 and 4 make 7.";
    let tokens = plain.tokenize(text, true, true).unwrap();
    assert!(tokens.len() >= 48, "{} tokens", tokens.len());
    let run = |m: &GgufModel, a: Option<Arc<dyn Adapter>>, one_by_one: bool| -> Vec<Vec<f32>> {
        let mut s = m
            .session(&SessionOptions {
                adapter: a,
                ..Default::default()
            })
            .unwrap();
        if one_by_one {
            tokens
                .iter()
                .map(|t| block_on(s.eval(&[*t], LogitsRequest::Last)).unwrap().data)
                .collect()
        } else {
            let l = block_on(s.eval(&tokens, LogitsRequest::All)).unwrap();
            (0..l.rows()).map(|i| l.row(i).to_vec()).collect()
        }
    };
    let tuned = run(&plain, Some(adapter.clone()), false);
    let without = run(&plain, None, false);
    let reference = run(&merged, None, false);
    let reference_seq = run(&merged, None, true);
    let half = plain
        .adapter(ModelSource::Path(dir.path().join("lora.gguf")), 0.5)
        .unwrap();
    let halved = run(&plain, Some(half), false);

    let (agree, kl) = compare(&tuned, &reference);
    let (agree_self, kl_self) = compare(&reference_seq, &reference);
    let (_, kl_off) = compare(&without, &reference);
    let (_, kl_half) = compare(&halved, &reference);
    eprintln!(
        "against the merged model: adapter top-1 {agree:.3}, KL {kl:.5}; the merged model one \
         token at a time top-1 {agree_self:.3}, KL {kl_self:.5}; no adapter KL {kl_off:.5}; \
         the adapter at half scale KL {kl_half:.5}"
    );
    assert!(
        agree >= agree_self - 0.03,
        "top-1 {agree} against {agree_self}"
    );
    assert!(kl <= 2.0 * kl_self + 1e-4, "KL {kl} against {kl_self}");
    assert!(
        kl_off > 5.0 * kl,
        "no adapter ({kl_off}) is not far from the merged model"
    );
    assert!(
        kl_half > 2.0 * kl,
        "half the scale ({kl_half}) is as close as the right one ({kl})"
    );
}

/// Top-1 agreement and mean KL(p ‖ q) over positions.
fn compare(p: &[Vec<f32>], q: &[Vec<f32>]) -> (f64, f64) {
    let log_softmax = |v: &[f32]| {
        let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z = v.iter().map(|x| (*x as f64 - m).exp()).sum::<f64>().ln() + m;
        v.iter().map(|x| *x as f64 - z).collect::<Vec<f64>>()
    };
    let (mut same, mut kl) = (0usize, 0.0);
    for (a, b) in p.iter().zip(q) {
        same += usize::from(argmax(a) == argmax(b));
        let (la, lb) = (log_softmax(a), log_softmax(b));
        kl += la
            .iter()
            .zip(&lb)
            .map(|(x, y)| x.exp() * (x - y))
            .sum::<f64>();
    }
    (same as f64 / p.len() as f64, kl / p.len() as f64)
}

/// Scale 0 is the base model; sessions with and without the adapter share
/// one model and do not disturb each other when interleaved.
#[test]
fn sessions_with_and_without_an_adapter_coexist() {
    let dir = tempfile::tempdir().unwrap();
    let base_path = base_path();
    let pairs = random_pairs(&header(&base_path), 11);
    let w = adapter_file("llama", &pairs);
    let model = load(&base_path);
    // From bytes, as an app bundle or a download would hand it over.
    let bytes: Arc<[u8]> = w.to_bytes().into();
    let on = model
        .adapter(
            ModelSource::Bytes {
                name: "lora".into(),
                bytes,
            },
            1.0,
        )
        .unwrap();
    let off = model
        .adapter(ModelSource::Path(write(&w, dir.path(), "l.gguf")), 0.0)
        .unwrap();
    let prompt = PROMPTS[0];
    let base = logits(&model, None, prompt);
    assert_eq!(
        logits(&model, Some(off), prompt),
        base,
        "scale 0 is the base model"
    );

    let tokens = model.tokenize(prompt, true, true).unwrap();
    let tuned = logits(&model, Some(on.clone()), prompt);
    let mut plain = model.session(&SessionOptions::default()).unwrap();
    let mut special = model
        .session(&SessionOptions {
            adapter: Some(on),
            ..Default::default()
        })
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            block_on(next_token_logits(&mut plain, &tokens)).unwrap(),
            base
        );
        assert_eq!(
            block_on(next_token_logits(&mut special, &tokens)).unwrap(),
            tuned
        );
    }
}

fn expect_code(r: Result<Arc<arny_engine_gguf::GgufAdapter>, EngineError>, code: &str) {
    match r {
        Ok(_) => panic!("expected a {code} error, the adapter loaded"),
        Err(e) => assert_eq!(e.code(), code, "{e}"),
    }
}

/// Each bad adapter is its own typed error, and the model keeps working.
#[test]
fn bad_adapters_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base_path = base_path();
    let base_header = header(&base_path);
    let model = load(&base_path);
    let before = logits(&model, None, PROMPTS[1]);
    let pairs = random_pairs(&base_header, 3);
    let good = adapter_file("llama", &pairs).to_bytes();

    // The model file itself.
    expect_code(
        model.adapter(ModelSource::Path(base_path.clone()), 1.0),
        "wrong_format",
    );
    // Truncated: the last tensor's data is cut off.
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &good[..good.len() - 1000]).unwrap();
    expect_code(model.adapter(ModelSource::Path(cut), 1.0), "corrupt");
    // Not GGUF at all.
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"PK\x03\x04 a zip file").unwrap();
    expect_code(model.adapter(ModelSource::Path(junk), 1.0), "wrong_format");
    // Another architecture.
    let other = write(&adapter_file("qwen2", &pairs), dir.path(), "qwen.gguf");
    expect_code(model.adapter(ModelSource::Path(other), 1.0), "incompatible");
    // Another base model's shapes (a wider hidden size).
    let mut wide = random_pairs(&base_header, 3);
    wide.truncate(2);
    for p in &mut wide {
        p.n_in *= 2;
        p.a = noise(1, (p.n_in * RANK) as usize, 0.1);
    }
    let wide = write(&adapter_file("llama", &wide), dir.path(), "wide.gguf");
    expect_code(model.adapter(ModelSource::Path(wide), 1.0), "incompatible");
    // A missing file; a bad scale.
    expect_code(
        model.adapter(ModelSource::Path(dir.path().join("none.gguf")), 1.0),
        "not_found",
    );
    let ok = write(&adapter_file("llama", &pairs), dir.path(), "ok.gguf");
    expect_code(
        model.adapter(ModelSource::Path(ok.clone()), f32::NAN),
        "invalid_input",
    );

    // An adapter of another model instance.
    let twin = load(&base_path);
    let foreign = twin.adapter(ModelSource::Path(ok), 1.0).unwrap();
    let err = model
        .session(&SessionOptions {
            adapter: Some(foreign),
            ..Default::default()
        })
        .err()
        .expect("a session with another model's adapter");
    assert_eq!(err.code(), "incompatible", "{err}");

    assert_eq!(
        logits(&model, None, PROMPTS[1]),
        before,
        "the model is unchanged"
    );
}

/// The shipped math adapter on llama.cpp makes PEFT's choices (see
/// `arny_conformance::peft`).
#[test]
fn the_shipped_math_adapter_runs_as_peft_does() {
    let known = &arny_model_store::MATH_SMOLLM2_135M;
    let model = load(&base_path());
    let file = arny_model_store::locate_adapter(known).unwrap();
    let adapter: Arc<dyn Adapter> = model.adapter(ModelSource::Path(file), 1.0).unwrap();
    assert_eq!(adapter.info().rank, 16);
    let reference = arny_model_store::adapter_reference(known).unwrap();
    let r = block_on(arny_conformance::peft::agreement(
        &model, adapter, reference,
    ))
    .unwrap();
    eprintln!("llama.cpp against PEFT: {r:?}");
    assert!(
        r.changed >= 20,
        "the adapter changes only {} choices",
        r.changed
    );
    assert!(r.base >= 0.9, "{r:?}");
    assert!(r.tuned >= r.base - 0.03, "{r:?}");
    assert!(
        r.follows >= 0.85,
        "llama.cpp follows the adapter at {}",
        r.follows
    );
}
