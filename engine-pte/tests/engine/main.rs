//! The ExecuTorch engine's integration tests, in one binary (one link
//! instead of four). They need the default model's fp32 export and the
//! export venv (scripts/test.sh makes both); the tiny model's export is
//! made here on first use and cached by content.

mod architectures;
mod bad_programs;
mod export_llm_signature;
mod merged_adapter;
mod quantized;
mod reference;
mod tck;
