//! Checks a file before llama.cpp sees it: the header is parsed by Arny's
//! bounds-checked reader and checked by [`arny_gguf::llama`], the common
//! mistakes (a directory, a foreign file) getting precise errors on the way.

use std::io::BufReader;
use std::path::Path;

use arny_engine_api::{EngineError, Result, check_model_file};
use arny_gguf::lora::LoraFile;
use arny_gguf::{GgufFile, ReadOptions};

const OPTIONS: ReadOptions = arny_gguf::llama::READ_OPTIONS;

/// Parses and checks the GGUF file at `path`; returns its size and its
/// tensor directory (see [`GgufFile::into_directory`]).
pub fn check_gguf_file(path: &Path) -> Result<(u64, GgufFile)> {
    let (len, gguf) = read_header(path, OPTIONS)?;
    arny_gguf::llama::check_model(&gguf, &path.display().to_string())?;
    Ok((len, gguf.into_directory()))
}

/// Same checks for an in-memory model.
pub fn check_gguf_bytes(bytes: &[u8], name: &str) -> Result<GgufFile> {
    let gguf = GgufFile::read_with(bytes, bytes.len() as u64, OPTIONS)
        .map_err(|e| e.into_engine_error(name))?;
    arny_gguf::llama::check_model(&gguf, name)?;
    Ok(gguf.into_directory())
}

/// Checks an adapter (a file's header, or bytes) against the model's
/// header: a LoRA adapter, its tensors within the file, every pair fitting
/// a tensor of the model.
pub fn check_lora(gguf: &GgufFile, base: &GgufFile, name: &str) -> Result<LoraFile> {
    let lora = LoraFile::parse(gguf, name)?;
    lora.check_against(base, name)?;
    Ok(lora)
}

/// Parses the header of the file at `path`, with its size.
pub fn read_header(path: &Path, options: ReadOptions) -> Result<(u64, GgufFile)> {
    let len = check_model_file(path)?;
    let name = path.display().to_string();
    let file = std::fs::File::open(path)
        .map_err(|e| EngineError::io(format!("open {}", path.display()), e))?;
    let gguf = GgufFile::read_with(BufReader::with_capacity(1 << 16, file), len, options)
        .map_err(|e| e.into_engine_error(&name))?;
    Ok((len, gguf))
}
