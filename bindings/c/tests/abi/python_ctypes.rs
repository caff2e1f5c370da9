//! Runs `test_ctypes.py`: the same path as the C program, through Python's
//! `ctypes` and the shared library.

use crate::common;

use std::path::Path;
use std::process::Command;

#[test]
fn python_ctypes_runs_the_whole_abi() {
    let f = common::fixture();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/test_ctypes.py");
    let run = Command::new("python3")
        .arg(&script)
        .arg(&f.lib)
        .args([&f.good, &f.truncated, &f.foreign])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "test_ctypes.py failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    assert!(stdout.contains("all ctypes checks passed"), "{stdout}");
}
