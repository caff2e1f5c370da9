//! Token ids equal llama.cpp's for the same text: every example utterance
//! of the built-in manifest plus strings chosen to break tokenizers
//! (unicode, whitespace runs, digits, code, special tokens), on SmolLM2 and
//! on a tiny model of each family's vocabulary (byte-level BPE with the
//! SmolLM2, Llama 3 and Qwen2 pre-tokenizers; SentencePiece with and
//! without the space prefix).

use arny_engine_api::{InferenceEngine, LoadOptions, ModelSource};
use arny_gguf::GgufFile;
use arny_tiny_models::{TinyArch, TinyModel, TinyTokenizer};
use arny_tokenizer::{BpeTokenizer, Tokenizer};

const TRICKY: &[&str] = &[
    "Hello world",
    " Hello world",
    "  two leading spaces",
    "trailing spaces   ",
    "a  b   c    d",
    "\t\ttabs\tand  spaces",
    "line one\nline two\n\nline four\n\n\n",
    "\r\nwindows\r\nlines",
    "   ",
    "\n",
    "12345678901234567890",
    "3.14159 and 2.71828",
    "$1,234.56 (or €1.234,56)",
    "x^2 + 3x - 7 = 0",
    "I'm, you're, they've, we'll, he'd, it's, don't, CAN'T, I'VE",
    "naïve café résumé",
    "Grüße aus München",
    "中文分词测试",
    "日本語のテキストです。",
    "한국어 문장입니다",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "Здравствуй, мир!",
    "emoji 👋🏽 🇫🇷 👨‍👩‍👧‍👦 ❤️",
    "math ∑∫√∞ ≤ ≥ ≠",
    "fn main() { println!(\"hi\"); }",
    "def f(x):\n    return x ** 2  # square",
    "<html><body class=\"x\">&amp;</body></html>",
    "https://example.com/path?q=1&r=two#frag",
    "snake_case camelCase PascalCase kebab-case",
    "!!!???...,,,;;;:::",
    "----====____****",
    "ALL CAPS SENTENCE WITH NUMBERS 42",
    "mixedCASE123abc456",
    "zero-width\u{200b}space and\u{00a0}nbsp",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text <|im_start|> in the middle",
    "<|im_start|><|im_end|>",
    "almost <|im_start but not quite|>",
    "<s>begin</s> and <unk> here",
    "a user-defined <|tool|> token, twice<|tool|><|tool|>",
    " leading space",
    "▁already escaped ▁▁",
    "ſtrange ﬁ ligatures Ⅻ ⅞",
];

#[tokio::test]
async fn token_ids_equal_llama_cpp() {
    let path =
        arny_model_store::require_default_model().expect("the default model; run scripts/setup.sh");
    parity(path).await;
}

/// The generated test model's vocabulary is tokenized alike by both too,
/// so tests that run engines on it compare like with like.
#[tokio::test]
async fn token_ids_equal_llama_cpp_on_the_tiny_model() {
    parity(TinyModel::default().file().unwrap()).await;
}

/// Each family's vocabulary kind, on the tiny model of that family:
/// Llama 3's and Qwen2's pre-tokenizers, SentencePiece for Phi-3 (space
/// prefix) and Gemma (none).
#[tokio::test]
async fn token_ids_equal_llama_cpp_for_every_family() {
    let mut kinds = Vec::new();
    for arch in TinyArch::ALL {
        let m = TinyModel::of(arch);
        kinds.push(m.tokenizer);
        parity(m.file().unwrap()).await;
    }
    for want in [
        TinyTokenizer::Bpe { pre: "llama-bpe" },
        TinyTokenizer::Bpe { pre: "qwen2" },
        TinyTokenizer::Spm {
            add_space_prefix: true,
        },
        TinyTokenizer::Spm {
            add_space_prefix: false,
        },
    ] {
        assert!(kinds.contains(&want), "{want:?} untested");
    }
}

async fn parity(path: std::path::PathBuf) {
    let bytes = std::fs::read(&path).unwrap();
    let file = GgufFile::from_bytes(&bytes).unwrap();
    let tk = Tokenizer::from_gguf(&file).unwrap();
    // SentencePiece prefixes plain text with a space (where the file says
    // so), and the prefix is part of the first piece's bytes.
    let prefix = match &tk {
        Tokenizer::Spm(_) => file
            .get("tokenizer.ggml.add_space_prefix")
            .and_then(arny_gguf::Value::as_bool)
            .unwrap_or(true),
        Tokenizer::Bpe(_) => false,
    };
    let model = arny_engine_gguf::GgufEngine::new()
        .load(ModelSource::Path(path), LoadOptions::default())
        .await
        .unwrap();
    let manifest: toml::Table =
        toml::from_str(include_str!("../../../sdk/config/arny.toml")).unwrap();
    let mut texts: Vec<String> = TRICKY.iter().map(|s| s.to_string()).collect();
    for s in manifest["specialists"].as_array().unwrap() {
        texts.extend(
            s["examples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_str().unwrap().to_string()),
        );
    }
    texts.extend(
        manifest["gateway"]["cloud_examples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string()),
    );
    assert!(texts.len() > 300);
    let mut checked = 0;
    for text in &texts {
        for special in [true, false] {
            let want = model.tokenize(text, false, special).unwrap();
            let got = tk.encode(text, special).unwrap();
            assert_eq!(got, want, "{text:?} (parse_special {special})");
            checked += 1;
        }
        // Bytes round-trip through the ids.
        let ids = tk.encode(text, false).unwrap();
        let back: Vec<u8> = ids
            .iter()
            .flat_map(|&i| tk.token_bytes(i).unwrap().to_vec())
            .collect();
        // (A user-defined token in the text starts a new run, which gets a
        // prefix of its own; SentencePiece reads a `▁` in the text as the
        // space it stands for.)
        if !(prefix && text.contains("<|tool|>")) {
            let text = match &tk {
                Tokenizer::Spm(_) => text.replace('\u{2581}', " "),
                Tokenizer::Bpe(_) => text.clone(),
            };
            let expect = if prefix { format!(" {text}") } else { text };
            assert_eq!(String::from_utf8(back).unwrap(), expect);
        }
        for &i in &ids {
            assert_eq!(
                tk.token_bytes(i).unwrap(),
                model.token_bytes(i).unwrap(),
                "bytes of token {i}"
            );
        }
    }
    assert_eq!(checked, texts.len() * 2);
    assert_eq!(tk.vocab_size() as u32, model.info().vocab_size);
}

#[test]
fn other_tokenizer_kinds_are_refused_clearly() {
    // A header with a SentencePiece tokenizer: refused with a message, not a panic.
    let path = arny_model_store::require_default_model().unwrap();
    let bytes = std::fs::read(path).unwrap();
    let mut file = GgufFile::from_bytes(&bytes).unwrap();
    file.metadata.insert(
        "tokenizer.ggml.model".into(),
        arny_gguf::Value::String("llama".into()),
    );
    let e = BpeTokenizer::from_gguf(&file).err().unwrap();
    assert!(e.to_string().contains("llama"), "{e}");
    // As SentencePiece it has no scores and no byte tokens: text outside
    // its pieces cannot be spelled, which is an error, not a panic.
    let spm = Tokenizer::from_gguf(&file).unwrap();
    assert!(spm.encode("\u{1F600}", false).is_err());
    file.metadata.insert(
        "tokenizer.ggml.model".into(),
        arny_gguf::Value::String("bert".into()),
    );
    let e = Tokenizer::from_gguf(&file).err().unwrap();
    assert!(e.to_string().contains("bert"), "{e}");
    file.metadata.insert(
        "tokenizer.ggml.model".into(),
        arny_gguf::Value::String("gpt2".into()),
    );
    file.metadata.insert(
        "tokenizer.ggml.pre".into(),
        arny_gguf::Value::String("klingon".into()),
    );
    assert!(
        BpeTokenizer::from_gguf(&file)
            .err()
            .unwrap()
            .to_string()
            .contains("klingon")
    );
    file.metadata.remove("tokenizer.ggml.merges");
    file.metadata.insert(
        "tokenizer.ggml.pre".into(),
        arny_gguf::Value::String("smollm".into()),
    );
    assert!(BpeTokenizer::from_gguf(&file).is_err());
}
