//! Making ExecuTorch programs with a spinner: the export venv when it is
//! missing, then the exporter, each stage shown as it starts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use arny_pte_export::{self as pte, PteQuant};
use indicatif::{ProgressBar, ProgressStyle};

/// A spinner with the elapsed time, for long steps without a known size.
pub fn spinner() -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Runs the exporter with a spinner showing its current stage.
pub fn export_with_progress(
    source: &Path,
    out: &Path,
    quant: PteQuant,
    max_len: u32,
    adapter: Option<&pte::MergedAdapter>,
) -> Result<PathBuf> {
    if !source.is_file() {
        bail!("not found: {}", source.display());
    }
    let venv = pte::venv_dir();
    if !pte::venv_ready(&venv) {
        let bar = spinner();
        bar.set_message("preparing the export venv");
        let result = pte::ensure_venv(&venv, &mut |line| {
            bar.set_message(line.chars().take(100).collect::<String>())
        });
        bar.finish_and_clear();
        result?;
    }
    let bar = spinner();
    bar.set_message(format!(
        "exporting {} ({}): starting Python",
        source.file_name().unwrap_or_default().to_string_lossy(),
        quant.name()
    ));
    let started = Instant::now();
    let result = pte::export(&venv, source, out, quant, max_len, adapter, &mut |stage| {
        bar.set_message(stage.to_string());
    });
    bar.finish_and_clear();
    let program = result?;
    eprintln!(
        "exported {} in {:.0} s",
        program.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(program)
}
