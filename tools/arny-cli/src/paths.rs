//! Which model file a command uses: the one named on the command line, else
//! the engine's default, fetched (GGUF) or exported (ExecuTorch) on first
//! use with progress on the terminal.

use std::path::{Path, PathBuf};

use anyhow::Result;
use arny_engine_api::EngineKind;
use arny_model_store::{self as store, StoreError};
use arny_pte_export::{self as pte, ExportError, PteQuant};

/// The model file for `engine`: `model` if given (a folder means its
/// `model.pte` for the pte engine), else that engine's default.
pub fn model_path_for(engine: EngineKind, model: Option<&Path>) -> Result<PathBuf> {
    match (engine, model) {
        (EngineKind::Pte, Some(p)) if p.is_dir() => Ok(p.join("model.pte")),
        (_, Some(p)) => Ok(p.to_path_buf()),
        (EngineKind::Pte, None) => default_export(PteQuant::Fp32),
        (EngineKind::Gguf | EngineKind::Burn, None) => default_gguf(),
    }
}

/// The default model (or `$ARNY_MODEL`), fetched into the cache if missing.
pub fn default_gguf() -> Result<PathBuf> {
    match store::require_default_model() {
        Ok(p) => Ok(p),
        Err(StoreError::Missing { .. }) => {
            eprintln!(
                "The default model ({}) is not in {} yet; fetching it.",
                store::DEFAULT_MODEL.description,
                store::models_dir().display()
            );
            Ok(crate::models::fetch_with_progress(&store::DEFAULT_MODEL)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// The default model's export with `quant`, made now if the cache lacks it.
pub fn default_export(quant: PteQuant) -> Result<PathBuf> {
    match pte::require_default_export(quant) {
        Ok(p) => Ok(p),
        Err(ExportError::Missing { dir, .. }) => {
            eprintln!(
                "No {quant} ExecuTorch export of the default model in the cache yet; exporting it (about 5 min, once)."
            );
            let source = default_gguf()?;
            crate::pte::export_with_progress(&source, &dir, quant, pte::DEFAULT_MAX_LEN, None)?;
            Ok(dir.join("model.pte"))
        }
        Err(e) => Err(e.into()),
    }
}
