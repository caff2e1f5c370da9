//! The Burn engine's integration tests, in one binary: one link instead of
//! four, and one process, so the wgpu runtime and the kernels it compiled
//! for the real model's shapes serve every test (on a software GPU each
//! new shape costs seconds).

mod adapters;
mod architectures;
mod precision;
mod tck;
mod tiny;
mod vs_llama_cpp;
