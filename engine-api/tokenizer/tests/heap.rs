//! What a tokenizer says it holds ([`Tokenizer::heap_bytes`], which the
//! engines add to a model's resident bytes for the memory budget) against
//! the heap it really holds, counted by this test binary's allocator: at
//! least the truth, and not far above it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use arny_gguf::GgufFile;
use arny_tiny_models::{TinyArch, TinyModel};
use arny_tokenizer::Tokenizer;

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as i64 - l.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn check(name: &str, bytes: &[u8]) {
    let file = GgufFile::from_bytes(bytes).unwrap();
    let before = LIVE.load(Ordering::Relaxed);
    let tk = Tokenizer::from_gguf(&file).unwrap();
    // Encoding fills the BPE word cache; the estimate covers a full one.
    let text = include_str!("../../../conformance-tests/tiny-models/src/corpus.txt");
    for (i, line) in text.lines().cycle().take(3000).enumerate() {
        tk.encode(&format!("{line} {i}"), i % 2 == 0).unwrap();
    }
    let live = (LIVE.load(Ordering::Relaxed) - before) as u64;
    let said = tk.heap_bytes();
    eprintln!(
        "{name}: live {live} B, estimate {said} B ({:.2}×)",
        said as f64 / live as f64
    );
    assert!(
        said >= live,
        "{name}: estimate {said} under the live {live}"
    );
    assert!(
        said <= live * 3 / 2,
        "{name}: estimate {said} over 1.5 × the live {live}"
    );
}

#[test]
fn heap_estimates_cover_what_tokenizers_hold() {
    let smollm = std::fs::read(arny_model_store::require_default_model().unwrap()).unwrap();
    check("SmolLM2", &smollm);
    check("tiny BPE", &TinyModel::default().gguf());
    check("tiny SentencePiece", &TinyModel::of(TinyArch::Phi3).gguf());
}
