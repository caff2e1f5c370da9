//! Building an SDK assistant for the `ask`, `route`, `serve` commands.

use anyhow::Result;
use arny_sdk::{Assistant, AssistantOptions, Event, Manifest};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArgs {
    /// Manifest (TOML). Default: the built-in one (SmolLM2 as gateway and
    /// every specialist; see sdk/config/arny.toml).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
}

impl ConfigArgs {
    pub fn manifest(&self) -> Result<Manifest> {
        Ok(match &self.config {
            Some(p) => Manifest::from_file(p)?,
            None => Manifest::builtin(),
        })
    }
}

/// The assistant, fetching known models and downloading `url` models first,
/// with progress bars.
pub async fn build(manifest: Manifest) -> Result<Assistant> {
    for m in &manifest.models {
        if let Some(k) = m.known.as_deref().and_then(arny_model_store::known)
            && arny_model_store::locate(k).is_err()
            && std::env::var_os(arny_model_store::MODEL_ENV).is_none()
        {
            eprintln!(
                "Model {} is not in {} yet; fetching it.",
                k.description,
                arny_model_store::models_dir().display()
            );
            crate::models::fetch_with_progress(k)?;
        }
        if let (Some(url), Some(sha)) = (&m.url, &m.sha256) {
            crate::models::download_with_progress(url, sha)?;
        }
    }
    Ok(Assistant::new(manifest, AssistantOptions::default()).await?)
}

/// Prints loading events on stderr, as a UI would show them.
pub fn show_events(assistant: &Assistant) {
    use futures::StreamExt;
    let mut rx = assistant.events();
    tokio::spawn(async move {
        while let Some(ev) = rx.next().await {
            match ev {
                Event::Loading { model, specialists } => {
                    let who = if specialists.is_empty() {
                        "gateway".to_string()
                    } else {
                        specialists.join("/")
                    };
                    eprintln!("Loading {who} specialist ({model})…");
                }
                Event::Loaded { model, bytes, ms } => {
                    eprintln!(
                        "Loaded {model}: {:.1} MiB in {ms:.0} ms",
                        bytes as f64 / (1 << 20) as f64
                    );
                }
                Event::AdapterLoaded {
                    adapter,
                    specialist,
                    bytes,
                    ms,
                    ..
                } => eprintln!(
                    "Loaded the {specialist} adapter ({adapter}): {:.1} MiB in {ms:.0} ms",
                    bytes as f64 / (1 << 20) as f64
                ),
                Event::LoadFailed { model, error } => eprintln!("Loading {model} failed: {error}"),
                Event::Unloaded { model, reason, .. } => eprintln!("Unloaded {model} ({reason:?})"),
                _ => {}
            }
        }
    });
}
