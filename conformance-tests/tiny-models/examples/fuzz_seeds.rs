//! Writes the seed corpora of the fuzz targets in `tools/fuzz` (checked
//! in; rerun after a format change):
//! `cargo run -p arny-tiny-models --example fuzz_seeds -- tools/fuzz/corpus`.
//!
//! Every seed is a small valid input, so the fuzzer starts from bytes that
//! reach deep into each parser rather than failing at the magic number.

use std::path::Path;

use arny_engine_api::BuiltinTemplate;
use arny_gguf::{GgufWriter, Value};
use arny_tiny_models::{Storage, TinyModel};

/// One layer, 8 wide, 264 tokens: a complete model in about 10 KB.
fn micro() -> TinyModel {
    TinyModel {
        n_layer: 1,
        n_embd: 8,
        n_head: 2,
        n_head_kv: 1,
        n_ff: 16,
        merges: 8,
        context_length: 64,
        storage: Storage::F16,
        ..TinyModel::default()
    }
}

fn lora() -> Vec<u8> {
    let mut w = GgufWriter::new();
    let s = |v: &str| Value::String(v.to_string());
    w.set("general.architecture", s("llama"))
        .set("general.type", s("adapter"))
        .set("adapter.type", s("lora"))
        .set("adapter.lora.alpha", Value::F32(4.0));
    let a: Vec<f32> = (0..16).map(|i| i as f32 / 16.0).collect();
    w.tensor_f32("blk.0.attn_q.weight.lora_a", &[8, 2], &a);
    w.tensor_f32("blk.0.attn_q.weight.lora_b", &[2, 8], &a);
    w.to_bytes()
}

/// A program header: flatbuffer root offset, `ET12`, then the extended
/// header naming a 64-byte program and 16 bytes of segments after it.
fn pte(extended: bool) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(40u32.to_le_bytes());
    b.extend(b"ET12");
    if extended {
        b.extend(b"eh00");
        b.extend(32u32.to_le_bytes());
        b.extend(64u64.to_le_bytes());
        b.extend(64u64.to_le_bytes());
        b.extend(16u64.to_le_bytes());
    }
    b.resize(80, 0);
    b
}

/// The chat-template target's input: the template, then messages, each a
/// role byte and its text, separated by NUL.
fn chat(template: &str, messages: &[(u8, &str)]) -> Vec<u8> {
    let mut b = template.as_bytes().to_vec();
    for (role, text) in messages {
        b.push(0);
        b.push(*role);
        b.extend(text.as_bytes());
    }
    b
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(name), bytes).unwrap();
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: fuzz_seeds <corpus dir>");
    let dir = Path::new(&dir);
    let model = micro().gguf();
    write(dir, "gguf", "micro-model.gguf", &model);
    write(dir, "gguf", "micro-lora.gguf", &lora());
    write(dir, "pte_header", "extended", &pte(true));
    write(dir, "pte_header", "legacy", &pte(false));
    let manifest = include_str!("../../../sdk/config/arny.toml");
    write(dir, "manifest", "reference.toml", manifest.as_bytes());
    write(
        dir,
        "manifest",
        "minimal.toml",
        concat!(
            "plan = \"universal\"\nmemory_budget = \"300 MiB\"\nqueue_timeout_secs = 5\n\n",
            "[[models]]\nid = \"m\"\nengine = \"gguf\"\npath = \"m.gguf\"\n\n",
            "[gateway]\nstrategy = \"examples\"\nthreshold = 0.5\n",
        )
        .as_bytes(),
    );
    for t in BuiltinTemplate::ALL {
        let conversation = [
            (0, "Be brief."),
            (1, "What is 2+2?"),
            (2, "4"),
            (1, "And 3+3?"),
        ];
        write(
            dir,
            "chat_template",
            t.name(),
            &chat(t.source(), &conversation),
        );
    }
    write(
        dir,
        "chat_template",
        "loop",
        &chat(
            "{% for i in range(1000) %}{{ i }}{% endfor %}{{ messages[0].content | upper }}",
            &[(1, "hi")],
        ),
    );
    for (name, json) in [
        ("empty", "{}"),
        (
            "sampling",
            r#"{"max_tokens": 16, "temperature": 0.7, "top_k": 40, "top_p": 0.9, "seed": 7, "stop": ["\n"]}"#,
        ),
        (
            "schema",
            r#"{"json_schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}"#,
        ),
        (
            "regex",
            r#"{"regex": "[0-9]{1,3}", "logprobs": true, "top_logprobs": 3}"#,
        ),
        (
            "camel",
            r#"{"maxTokens": 8, "jsonObject": true, "specialist": "math"}"#,
        ),
    ] {
        write(dir, "options", name, json.as_bytes());
    }
    for (name, text) in [
        ("ascii", "Hello, world! 2 + 2 = 4."),
        ("special", "<|im_start|>user\nhi<|im_end|>\n"),
        ("unicode", "naïve café — 東京 🙂\t\r\n  spaces"),
    ] {
        write(dir, "tokenizer", name, text.as_bytes());
    }
    write(
        dir,
        "tokenizer",
        "bytes",
        &[0xff, 0xfe, 0x00, 0xc3, 0x28, b'a'],
    );
}
