//! What only the llama.cpp engine can check: agreement with llama.cpp's own
//! chat-template code, its logs, its thread settings. Behaviour shared by
//! all engines is in `conformance-tests`.

use std::io::Write;
use std::sync::{Arc, Mutex};

use arny_engine_api::{
    ChatMessage, GenerateRequest, LoadOptions, Model, SamplingParams, SessionOptions, generate,
};
use arny_engine_gguf::GgufEngine;
use arny_engine_gguf::llama_cpp_2::model::LlamaChatMessage;

fn load(options: LoadOptions) -> arny_engine_gguf::GgufModel {
    let path = arny_model_store::require_default_model().unwrap_or_else(|e| panic!("{e}"));
    GgufEngine::new()
        .load_path(&path, &options)
        .expect("load default model")
}

/// minijinja's rendering of the model's template equals llama.cpp's own
/// C++ ChatML implementation byte for byte whenever the conversation has a
/// system message. Without one they differ on purpose: SmolLM2's Jinja
/// template inserts a default system prompt, which llama.cpp's built-in
/// ChatML code skips; Arny follows the template (checked against Python's
/// jinja2 in the TCK).
#[test]
fn template_rendering_matches_llama_cpp() {
    let model = load(LoadOptions::default());
    let raw = model.llama_model();
    let template = raw.chat_template(None).expect("model has a template");
    let conversations: Vec<Vec<ChatMessage>> = vec![
        vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("What is 2+2?"),
        ],
        vec![
            ChatMessage::system("You are a math tutor."),
            ChatMessage::user("What is 2+2?"),
            ChatMessage::assistant("4."),
            ChatMessage::user("And 3+3? Answer with “six” — or 6 🎉"),
        ],
        vec![
            ChatMessage::system(""),
            ChatMessage::user("first"),
            ChatMessage::assistant("  spaced\n\nreply  "),
            ChatMessage::user("second"),
        ],
    ];
    for conv in conversations {
        for add_generation_prompt in [true, false] {
            let ours = model
                .render_chat(&conv, add_generation_prompt)
                .expect("minijinja render");
            let msgs: Vec<LlamaChatMessage> = conv
                .iter()
                .map(|m| LlamaChatMessage::new(m.role.as_str().into(), m.content.clone()).unwrap())
                .collect();
            let theirs = raw
                .apply_chat_template(&template, &msgs, add_generation_prompt)
                .expect("llama.cpp render");
            assert_eq!(ours, theirs, "conversation {conv:?}");
        }
    }
    // The documented difference.
    let hi = [ChatMessage::user("Hi")];
    let ours = model.render_chat(&hi, true).unwrap();
    let msgs = [LlamaChatMessage::new("user".into(), "Hi".into()).unwrap()];
    let theirs = raw.apply_chat_template(&template, &msgs, true).unwrap();
    assert_eq!(
        ours.strip_suffix(&theirs)
            .map(|p| p.contains("named SmolLM")),
        Some(true)
    );
}

#[test]
fn thread_count_is_honoured_and_does_not_change_tokens() {
    let one = load(LoadOptions {
        threads: Some(1),
        ..LoadOptions::default()
    });
    let two = load(LoadOptions {
        threads: Some(2),
        ..LoadOptions::default()
    });
    assert_eq!(one.threads(), 1);
    assert_eq!(two.threads(), 2);
    assert!(
        two.info().device.contains("2 threads"),
        "{}",
        two.info().device
    );
    let answer = |m: &arny_engine_gguf::GgufModel| {
        futures::executor::block_on(async {
            let mut s = m.new_session(SessionOptions::default()).await.unwrap();
            let req = GenerateRequest {
                sampling: SamplingParams::greedy(),
                max_tokens: 16,
                ..GenerateRequest::chat("What is 2+2?")
            };
            generate(m, s.as_mut(), req, |_| {}).await.unwrap().tokens
        })
    };
    assert_eq!(answer(&one), answer(&two));
}

#[test]
fn default_threads_follow_the_policy() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let t = arny_engine_gguf::default_threads();
    if cores <= 2 {
        assert_eq!(t, 1);
    } else {
        assert!(t >= 1 && t as usize <= cores / 2);
    }
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn llama_cpp_logs_reach_tracing() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        // A well-formed file that lacks a tensor the llama architecture
        // needs: only llama.cpp can tell.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("renamed.gguf");
        let mut bytes = std::fs::read(arny_model_store::require_default_model().unwrap()).unwrap();
        let at = bytes
            .windows(18)
            .position(|w| w == b"output_norm.weight")
            .unwrap();
        bytes[at..at + 18].copy_from_slice(b"output_norx.weight");
        std::fs::write(&path, &bytes).unwrap();
        let err = GgufEngine::new()
            .load_path(&path, &LoadOptions::default())
            .err()
            .expect("model without output_norm must fail");
        // The typed error carries llama.cpp's own explanation.
        assert!(
            matches!(err, arny_engine_api::EngineError::Corrupt { .. })
                && err.to_string().contains("output_norm.weight"),
            "{err}"
        );
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("llama.cpp") && l.contains("ERROR")),
        "no llama.cpp error in the captured logs:\n{text}"
    );
}

#[test]
fn load_progress_is_reported() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let model = load(LoadOptions {
        progress: Some(Arc::new(move |p| sink.lock().unwrap().push(p))),
        ..LoadOptions::default()
    });
    drop(model);
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty());
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!((seen.last().unwrap() - 1.0).abs() < 1e-6, "{seen:?}");
}

#[test]
fn gpu_request_is_refused_clearly() {
    let path = arny_model_store::require_default_model().unwrap();
    let err = GgufEngine::new()
        .load_path(
            &path,
            &LoadOptions {
                device: arny_engine_api::DeviceRequest::Gpu,
                ..LoadOptions::default()
            },
        )
        .err()
        .expect("gpu must be refused");
    assert!(
        matches!(err, arny_engine_api::EngineError::Unsupported(_)),
        "{err}"
    );
}

/// Overwrites the scalar value of metadata `key` in a GGUF file image.
fn patch_scalar(bytes: &mut [u8], key: &str, value: &[u8]) {
    let mut needle = (key.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(key.as_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap_or_else(|| panic!("{key} not in the model"));
    let value_at = at + needle.len() + 4;
    bytes[value_at..value_at + value.len()].copy_from_slice(value);
}

/// Values that make llama.cpp hit a GGML_ASSERT, which aborts the process,
/// are refused before llama.cpp sees them. Without the check this test
/// would not fail: it would kill the test binary.
#[test]
fn hostile_hyperparameters_are_refused_not_aborted() {
    let original = std::fs::read(arny_model_store::require_default_model().unwrap()).unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "llama.block_count",
            1000u32.to_le_bytes().to_vec(),
            "block_count",
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            (-1.0f32).to_le_bytes().to_vec(),
            "epsilon",
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            f32::NAN.to_le_bytes().to_vec(),
            "epsilon",
        ),
        (
            "llama.attention.head_count_kv",
            7u32.to_le_bytes().to_vec(),
            "KV heads",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (key, value, needle) in cases {
        let mut bytes = original.clone();
        patch_scalar(&mut bytes, key, &value);
        let path = dir.path().join("hostile.gguf");
        std::fs::write(&path, &bytes).unwrap();
        let err = GgufEngine::new()
            .load_path(&path, &LoadOptions::default())
            .err()
            .unwrap_or_else(|| panic!("{key} = {value:?} loaded"));
        assert!(
            matches!(err, arny_engine_api::EngineError::Corrupt { .. })
                && err.to_string().contains(needle),
            "{key}: {err}"
        );
    }
}

/// Two tokens with the same text trip a GGML_ASSERT in llama.cpp's
/// vocabulary loader; the check in front of it refuses the file instead.
#[test]
fn duplicate_vocabulary_entries_are_refused_not_aborted() {
    let mut bytes = std::fs::read(arny_model_store::require_default_model().unwrap()).unwrap();
    let key = b"tokenizer.ggml.tokens";
    let mut at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    assert_eq!(u32_at(&bytes, at), 9, "array");
    assert_eq!(u32_at(&bytes, at + 4), 8, "of strings");
    at += 16;
    // Walk to two neighbouring tokens of equal length past the byte tokens,
    // then make the second a copy of the first.
    let mut prev: Option<(usize, usize)> = None;
    for index in 0.. {
        let len = u64_at(&bytes, at) as usize;
        let text = at + 8;
        if let Some((p_text, p_len)) = prev
            && index > 1000
            && p_len == len
        {
            let copy = bytes[p_text..p_text + len].to_vec();
            bytes[text..text + len].copy_from_slice(&copy);
            break;
        }
        prev = Some((text, len));
        at = text + len;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("duplicate.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let err = GgufEngine::new()
        .load_path(&path, &LoadOptions::default())
        .err()
        .expect("duplicate token must be refused");
    assert!(err.to_string().contains("appears twice"), "{err}");
}
