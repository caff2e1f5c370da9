//! What the C and Python tests share: the built library and three
//! manifests (the real one, and two whose model file is broken).

use std::path::{Path, PathBuf};

pub struct Fixture {
    /// libarny.so in cargo's output dir for this profile.
    pub lib: PathBuf,
    pub good: PathBuf,
    pub truncated: PathBuf,
    pub foreign: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn fixture() -> Fixture {
    // target/<profile>/deps/<this test> -> target/<profile>
    let exe = std::env::current_exe().expect("test path");
    let lib_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let lib = lib_dir.join(format!(
        "{}arny{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    // `cargo test` builds the rlib only; the shared library comes from
    // `cargo build` (scripts/test.sh runs `cargo build --all-targets`).
    let built = std::fs::metadata(&lib)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `cargo build --release -p arny-c`",
                lib.display()
            )
        });
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs");
    let edited = std::fs::metadata(&src)
        .and_then(|m| m.modified())
        .expect("src/lib.rs");
    assert!(
        built >= edited,
        "{} is older than {}: run `cargo build --release -p arny-c`",
        lib.display(),
        src.display()
    );

    let model = arny_model_store::require_default_model().unwrap_or_else(|e| panic!("{e}"));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let good = repo.join("sdk/config/arny.toml");
    let builtin = std::fs::read_to_string(&good).expect("sdk/config/arny.toml");
    let known = "known = \"smollm2-135m-instruct-q4_1\"";
    assert!(builtin.contains(known), "the built-in manifest changed");

    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = std::fs::read(&model).expect("model");
    // Cut inside the tensor data: the header parses, the weights are short.
    std::fs::write(dir.path().join("truncated.gguf"), &bytes[..bytes.len() / 2]).expect("write");
    std::fs::write(
        dir.path().join("foreign.gguf"),
        b"PK\x03\x04 this is a zip, not a model",
    )
    .expect("write");
    let manifest = |file: &str| {
        let p = dir.path().join(format!("{file}.toml"));
        let text = builtin.replace(known, &format!("path = \"{file}.gguf\""));
        std::fs::write(&p, text).expect("write manifest");
        p
    };
    Fixture {
        lib,
        truncated: manifest("truncated"),
        foreign: manifest("foreign"),
        good,
        _dir: dir,
    }
}
