//! `include/arny.h` is what apps compile against, so it must match the
//! Rust source: this regenerates it with cbindgen and compares. Run with
//! `ARNY_BLESS=1` to write the new header after changing the ABI.

use std::path::Path;

#[test]
fn checked_in_header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("utf-8");
    let path = dir.join("include/arny.h");
    if std::env::var_os("ARNY_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write header");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/arny.h is stale: run `ARNY_BLESS=1 cargo test -p arny-c --test abi` and commit it"
    );
}
