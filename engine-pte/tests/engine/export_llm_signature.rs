//! ExecuTorch export_llm's signature, `forward(tokens [1, seq], input_pos
//! [1]) -> [1, vocab]`, on a small program built by
//! `fixtures/make_last_logits_program.py` in the export venv. Its argmax is
//! a known function of every cached token and its position, so positions,
//! chunking, all-row logits (one token per call), truncation and the
//! replay after another session used the cache are all checked exactly.

use std::path::PathBuf;
use std::process::Command;

use arny_engine_api::{
    EngineError, InferenceEngine, LoadOptions, LogitsRequest, ModelSource, SessionOptions,
    sampler::argmax,
};
use arny_pte_export::{self as pte, PteQuant};

const VOCAB: u64 = 49_152;
const MAX_LEN: usize = 64;

/// What the program's argmax must be after `history`.
fn h(history: &[u32]) -> usize {
    let s: u64 = history
        .iter()
        .enumerate()
        .map(|(i, &t)| (i as u64 + 1) * u64::from(t))
        .sum();
    (s % VOCAB) as usize
}

fn build_program(dir: &std::path::Path) -> PathBuf {
    let venv = pte::venv_dir();
    assert!(
        pte::venv_ready(&venv),
        "the export venv is missing at {}: run scripts/setup.sh",
        venv.display()
    );
    let export = pte::require_default_export(PteQuant::Fp32).unwrap_or_else(|e| panic!("{e}"));
    let tokenizer = export.with_file_name("tokenizer.json");
    let out = dir.join("last_logits.pte");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/make_last_logits_program.py"
    );
    let status = Command::new(venv.join("bin/python"))
        .arg(script)
        .arg(&out)
        .arg(&tokenizer)
        .arg(MAX_LEN.to_string())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run python");
    assert!(status.success(), "building the test program failed");
    out
}

#[test]
fn the_last_logits_signature_is_driven_correctly() {
    futures::executor::block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = build_program(dir.path());
        let model = arny_engine_pte::PteEngine::new()
            .load(ModelSource::Path(path), LoadOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(model.info().context_length as usize, MAX_LEN);
        assert_eq!(model.info().vocab_size as u64, VOCAB);

        let mut a = model
            .new_session(SessionOptions::default())
            .await
            .expect("a");
        let mut hist = vec![5, 7, 11];
        let l = a.eval(&hist, LogitsRequest::Last).await.expect("prefill");
        assert_eq!(l.rows(), 1);
        assert_eq!(argmax(l.last()), Some(h(&hist) as u32));

        // All rows from a program that returns only the last one.
        let l = a.eval(&[3, 4], LogitsRequest::All).await.expect("all");
        assert_eq!(l.rows(), 2);
        hist.push(3);
        assert_eq!(argmax(l.row(0)), Some(h(&hist) as u32));
        hist.push(4);
        assert_eq!(argmax(l.row(1)), Some(h(&hist) as u32));

        // Truncate, continue: the stale entries must not count.
        a.truncate(2).expect("truncate");
        hist.truncate(2);
        hist.push(9);
        let l = a
            .eval(&[9], LogitsRequest::Last)
            .await
            .expect("after truncate");
        assert_eq!(argmax(l.last()), Some(h(&hist) as u32));

        // Another session overwrites the cache; the first gets its own back.
        let mut b = model
            .new_session(SessionOptions::default())
            .await
            .expect("b");
        let other = [100, 200, 300, 400];
        let l = b.eval(&other, LogitsRequest::Last).await.expect("b");
        assert_eq!(argmax(l.last()), Some(h(&other) as u32));
        hist.push(1);
        let l = a.eval(&[1], LogitsRequest::Last).await.expect("a again");
        assert_eq!(argmax(l.last()), Some(h(&hist) as u32));

        // The program's length is the limit, and the cache is left as it was.
        let long = vec![1u32; MAX_LEN];
        let err = a.eval(&long, LogitsRequest::Last).await.unwrap_err();
        assert!(matches!(err, EngineError::ContextOverflow { .. }), "{err}");
        assert_eq!(a.tokens().len(), hist.len());
        let fill = vec![2u32; MAX_LEN - hist.len()];
        let l = a
            .eval(&fill, LogitsRequest::Last)
            .await
            .expect("fill to the end");
        hist.extend(&fill);
        assert_eq!(argmax(l.last()), Some(h(&hist) as u32));
    });
}
