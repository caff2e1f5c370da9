//! Arbitrary bytes through the tokenizer of the tiny models (byte-level
//! BPE, as SmolLM2's): encoding never fails on text and loses nothing, so
//! the tokens' bytes are the text's bytes again.
#![no_main]

use std::sync::OnceLock;

use arny_gguf::GgufFile;
use arny_tokenizer::BpeTokenizer;
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static BpeTokenizer {
    static TOKENIZER: OnceLock<BpeTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let file = GgufFile::from_bytes(&arny_tiny_models::TinyModel::default().gguf())
            .expect("the tiny model parses");
        BpeTokenizer::from_gguf(&file).expect("the tiny model has a tokenizer")
    })
}

fuzz_target!(|data: &[u8]| {
    let t = tokenizer();
    let text = String::from_utf8_lossy(data);
    let ids = t.encode(&text, false).expect("plain text always encodes");
    let mut bytes: Vec<u8> = Vec::with_capacity(text.len());
    for &id in &ids {
        assert!(
            (id as usize) < t.vocab_size(),
            "token {id} out of the vocabulary"
        );
        bytes.extend(t.token_bytes(id).expect("every token has bytes"));
    }
    assert_eq!(bytes, text.as_bytes(), "encoding lost or changed bytes");
    let _ = t.encode(&text, true);
    let _ = BpeTokenizer::from_tokenizer_json(data);
});
