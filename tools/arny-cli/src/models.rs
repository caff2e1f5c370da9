//! `arny models`: the model cache.

use anyhow::{Result, anyhow};
use arny_model_store::{self as store, FetchProgress, KnownModel};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Known models and whether they are in the cache.
    List,
    /// Put a known model into the cache (default: the default model).
    Fetch {
        /// Model id from `arny models list`.
        id: Option<String>,
    },
    /// Print the path of the default model.
    Path,
    /// Write the generated tiny test model (random weights, Llama
    /// architecture, ~0.2 M parameters) into the cache and print its path.
    Tiny {
        /// How its matrices are stored: f32, f16, q8_0 or q4_1 (the block
        /// formats the packed kernels read).
        #[arg(long, value_enum, default_value_t = TinyStorage::F32)]
        storage: TinyStorage,
    },
}

/// `arny models tiny --storage`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyStorage {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_1")]
    Q4_1,
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::List => {
            println!("models folder: {}", store::models_dir().display());
            for m in store::KNOWN_MODELS {
                let state = match store::locate(m) {
                    Ok(_) => "present",
                    Err(_) => "not fetched",
                };
                let default = if *m == store::DEFAULT_MODEL {
                    " (default)"
                } else {
                    ""
                };
                println!("{}{default}: {} [{state}]", m.id, m.description);
            }
            Ok(())
        }
        Command::Fetch { id } => {
            let model = match id {
                Some(id) => store::known(&id)
                    .ok_or_else(|| anyhow!("unknown model `{id}`; see `arny models list`"))?,
                None => &store::DEFAULT_MODEL,
            };
            let path = fetch_with_progress(model)?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Path => {
            println!("{}", store::require_default_model()?.display());
            Ok(())
        }
        Command::Tiny { storage } => {
            use arny_tiny_models::Storage;
            let model = arny_tiny_models::TinyModel {
                storage: match storage {
                    TinyStorage::F32 => Storage::F32,
                    TinyStorage::F16 => Storage::F16,
                    TinyStorage::Q8_0 => Storage::Q8_0,
                    TinyStorage::Q4_1 => Storage::Q4_1,
                },
                ..Default::default()
            };
            println!("{}", model.file()?.display());
            Ok(())
        }
    }
}

/// Fetches `model` with progress bars on a terminal.
pub fn fetch_with_progress(model: &KnownModel) -> Result<std::path::PathBuf> {
    let bars = Bars {
        bar: ProgressBar::new(0),
    };
    let path = store::fetch(model, &bars);
    bars.bar.finish_and_clear();
    Ok(path?)
}

/// Downloads a manifest's `url` model with progress bars on a terminal.
pub fn download_with_progress(url: &str, sha256: &str) -> Result<std::path::PathBuf> {
    let bars = Bars {
        bar: ProgressBar::new(0),
    };
    let path = store::download(url, sha256, &bars);
    bars.bar.finish_and_clear();
    Ok(path?)
}

struct Bars {
    bar: ProgressBar,
}

impl FetchProgress for Bars {
    fn phase(&self, name: &str, total: Option<u64>) {
        self.bar.reset();
        match total {
            Some(n) => {
                self.bar.set_length(n);
                self.bar.set_style(
                    ProgressStyle::with_template(
                        "{msg:>9} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
            }
            None => {
                self.bar.set_style(ProgressStyle::default_spinner());
                // pip draws its own bar; a spinner would fight with it.
                if self.interactive() {
                    self.bar
                        .set_draw_target(indicatif::ProgressDrawTarget::hidden());
                }
            }
        }
        if total.is_some() {
            self.bar
                .set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        self.bar.set_message(name.to_string());
    }

    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }

    fn interactive(&self) -> bool {
        std::io::IsTerminal::is_terminal(&std::io::stderr())
    }
}
