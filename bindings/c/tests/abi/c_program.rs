//! Compiles `abi_test.c` against `include/arny.h` and the shared library
//! with the system C compiler, and runs it on the real model.

use crate::common;

use std::path::Path;
use std::process::Command;

#[test]
fn c_program_runs_the_whole_abi() {
    let f = common::fixture();
    let lib_dir = f.lib.parent().expect("lib dir");
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().expect("tempdir");
    let exe = out.path().join("abi_test");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args([
            "-std=c11",
            "-D_POSIX_C_SOURCE=200809L",
            "-Wall",
            "-Wextra",
            "-Werror",
        ])
        .arg("-I")
        .arg(here.join("include"))
        .arg(here.join("tests/abi_test.c"))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib_dir.display()))
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .args(["-larny", "-lpthread"])
        .status()
        .unwrap_or_else(|e| panic!("{cc}: {e}"));
    assert!(status.success(), "compiling abi_test.c failed");
    let run = Command::new(&exe)
        .args([&f.good, &f.truncated, &f.foreign])
        .output()
        .expect("run abi_test");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "abi_test failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    assert!(stdout.contains("all C ABI checks passed"), "{stdout}");
}
