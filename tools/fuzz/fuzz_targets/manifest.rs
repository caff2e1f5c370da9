//! A manifest (TOML) through the SDK's parser and validation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = arny_sdk::Manifest::parse(text, "fuzz", std::path::Path::new("/nonexistent"));
    }
});
