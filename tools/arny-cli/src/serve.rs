//! `arny serve`: the assistant as an OpenAI-compatible API on loopback.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use arny_server::ServerOptions;

use crate::assistant::ConfigArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Port on 127.0.0.1 (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Address to bind. Anything but loopback exposes the models to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Name of an environment variable holding an API key clients must send.
    #[arg(long)]
    api_key_env: Option<String>,
    /// Generations at once; more wait in a first-come queue.
    #[arg(long, default_value_t = 4)]
    max_concurrent: usize,
    /// Requests that may wait for a slot; more get HTTP 429 with
    /// Retry-After. How long they wait is the manifest's
    /// `queue_timeout_secs`.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
}

pub fn run(args: Args) -> Result<()> {
    let manifest = args.config.manifest()?;
    let api_key = match &args.api_key_env {
        Some(var) => {
            Some(std::env::var(var).with_context(|| format!("--api-key-env: ${var} is not set"))?)
        }
        None => None,
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let assistant = crate::assistant::build(manifest).await?;
        crate::assistant::show_events(&assistant);
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.host, args.port))
            .await
            .with_context(|| format!("bind {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        // Scripts wait for this line; it names the real port when --port 0.
        eprintln!("arny serve: listening on http://{addr}/v1");
        let options = ServerOptions {
            api_key,
            max_concurrent: args.max_concurrent,
            max_queue: args.max_queue,
            queue_timeout: None,
        };
        tokio::select! {
            r = arny_server::serve(listener, assistant, options) => r?,
            _ = tokio::signal::ctrl_c() => eprintln!("arny serve: stopping"),
        }
        Ok(())
    })
}
