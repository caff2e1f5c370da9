//! Request options JSON as the C ABI (and the wasm binding) receive it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(options) = arny_sdk::AskOptions::from_json(text)
    {
        let _ = options.request("fuzz");
    }
});
