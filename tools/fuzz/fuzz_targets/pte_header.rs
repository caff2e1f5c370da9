//! The `.pte` header check that runs before ExecuTorch sees a file. The
//! engine crate links the ExecuTorch runtime, so its header module is
//! compiled here on its own: the same source file, not a copy.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../../engine-pte/src/header.rs"]
#[allow(dead_code)]
mod header;

fuzz_target!(|data: &[u8]| {
    let head = &data[..data.len().min(64)];
    if let Ok(h) = header::check(head, data.len() as u64, "fuzz") {
        assert!(h.program_size <= data.len() as u64);
    }
    // The same head against every kind of claimed length (a file may be
    // longer than the bytes read from it).
    if data.len() >= 8 {
        let claimed = u64::from_le_bytes(data[data.len() - 8..].try_into().unwrap());
        if let Ok(h) = header::check(head, claimed, "fuzz") {
            assert!(h.program_size <= claimed);
        }
    }
});
