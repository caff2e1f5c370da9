//! Arbitrary bytes through the tokenizers of the tiny models: byte-level
//! BPE (as SmolLM2's) and SentencePiece without a space prefix (as
//! Gemma's). Encoding never fails on text and loses nothing, so the tokens'
//! bytes are the text's bytes again (SentencePiece reads a `▁` in the
//! text as the space it stands for, as llama.cpp does).
#![no_main]

use std::sync::OnceLock;

use arny_gguf::GgufFile;
use arny_tiny_models::{TinyArch, TinyModel};
use arny_tokenizer::{BpeTokenizer, Tokenizer};
use libfuzzer_sys::fuzz_target;

fn tokenizers() -> &'static [Tokenizer; 2] {
    static TOKENIZERS: OnceLock<[Tokenizer; 2]> = OnceLock::new();
    TOKENIZERS.get_or_init(|| {
        [TinyModel::default(), TinyModel::of(TinyArch::Gemma3)].map(|m| {
            let file = GgufFile::from_bytes(&m.gguf()).expect("the tiny model parses");
            Tokenizer::from_gguf(&file).expect("the tiny model has a tokenizer")
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for t in tokenizers() {
        let ids = t.encode(&text, false).expect("plain text always encodes");
        let mut bytes: Vec<u8> = Vec::with_capacity(text.len());
        for &id in &ids {
            assert!(
                (id as usize) < t.vocab_size(),
                "token {id} out of the vocabulary"
            );
            bytes.extend(t.token_bytes(id).expect("every token has bytes"));
        }
        let want = match t {
            Tokenizer::Bpe(_) => text.to_string(),
            Tokenizer::Spm(_) => text.replace('\u{2581}', " "),
        };
        assert_eq!(bytes, want.as_bytes(), "encoding lost or changed bytes");
        let _ = t.encode(&text, true);
    }
    let _ = BpeTokenizer::from_tokenizer_json(data);
});
