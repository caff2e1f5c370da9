//! Builds the C++ shim against the ExecuTorch runtime that ships in the
//! `executorch` wheel (unpacked by `scripts/setup.sh`), as a shared library
//! the engine opens at run time.
//!
//! Why a shared library and not a static one linked into every binary: the
//! kernel and delegate libraries register themselves from static
//! initializers, so they must be linked `--no-as-needed`, and they must be
//! found at run time (an rpath). A library crate cannot pass link arguments
//! to the binaries that depend on it, so the shim carries both itself and
//! the engine `dlopen`s it by the absolute path baked in here
//! (`ARNY_PTE_SHIM` overrides it at run time).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The runtime version the shim is written against.
const EXECUTORCH_VERSION: &str = "1.5.1";

/// Libraries linked into the shim, in dependency order. All but the first
/// are registration-only.
const LIBS: &[&str] = &[
    "executorch",
    "executorch_threadpool",
    "executorch_kernels_optimized",
    "executorch_kernels_quantized",
    "executorch_backend_xnnpack",
];

fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ARNY_EXECUTORCH_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache
        .join("arny")
        .join(format!("executorch-{EXECUTORCH_VERSION}"))
        .join("executorch")
}

fn main() {
    println!("cargo::rerun-if-env-changed=ARNY_EXECUTORCH_DIR");
    println!("cargo::rerun-if-env-changed=XDG_CACHE_HOME");
    println!("cargo::rerun-if-changed=shim/pte_shim.cpp");
    println!("cargo::rerun-if-changed=shim/pte_shim.h");
    println!("cargo::rerun-if-changed=shim/llm_ops.cpp");

    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "linux" {
        // The wheel's runtime is Linux x86-64. Elsewhere the engine builds
        // and reports itself unavailable at load time.
        println!("cargo::rustc-env=ARNY_PTE_SHIM=");
        return;
    }

    let root = runtime_dir();
    let include = root.join("include");
    let lib = root.join("lib");
    if !include
        .join("executorch/extension/module/module.h")
        .is_file()
        || !lib.join("libexecutorch.so").is_file()
    {
        eprintln!(
            "error: ExecuTorch runtime {EXECUTORCH_VERSION} not found in {}: run scripts/setup.sh (or set ARNY_EXECUTORCH_DIR to an unpacked executorch wheel's `executorch` dir)",
            root.display()
        );
        std::process::exit(1);
    }
    println!("cargo::rerun-if-changed={}", lib.display());

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .file("shim/pte_shim.cpp")
        // The custom KV-cache and SDPA operators (see the file for why).
        .file("shim/llm_ops.cpp")
        .include(&include)
        .include(include.join("executorch/runtime/core/portable_type/c10"))
        // What the wheel's executorch-config.cmake asks consumers to define.
        .define("C10_USING_CUSTOM_GENERATED_MACROS", None)
        .define("ET_EVENT_TRACER_ENABLED", None)
        .define("ET_USE_THREADPOOL", None)
        .flag_if_supported("-Wno-deprecated-declarations")
        // Lets the attention loops' `omp simd` reductions vectorize without
        // OpenMP's runtime (nothing else of OpenMP is used).
        .flag_if_supported("-fopenmp-simd")
        .pic(true)
        .warnings(false);
    let objects = build.compile_intermediates();

    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let shim = out.join("libarny_pte_shim.so");
    link_shim(&build, &objects, &lib, &shim);
    println!("cargo::rustc-env=ARNY_PTE_SHIM={}", shim.display());
    println!(
        "cargo::rustc-env=ARNY_EXECUTORCH_RUNTIME={}",
        root.display()
    );
}

fn link_shim(build: &cc::Build, objects: &[PathBuf], lib: &Path, shim: &Path) {
    let mut cmd: Command = build.get_compiler().to_command();
    cmd.arg("-shared").arg("-o").arg(shim).args(objects);
    cmd.arg(format!("-L{}", lib.display()));
    cmd.arg(format!("-Wl,-rpath,{}", lib.display()));
    cmd.arg("-Wl,--no-undefined");
    cmd.arg("-Wl,--push-state,--no-as-needed");
    for l in LIBS {
        cmd.arg(format!("-l{l}"));
    }
    cmd.arg("-Wl,--pop-state");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running the linker for the PTE shim: {e}"));
    if !status.success() {
        panic!("linking the PTE shim failed: {cmd:?}");
    }
}
