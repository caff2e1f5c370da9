//! `arny`: run on-device language models from the terminal.

mod ask;
mod assistant;
mod bench;
mod bench_raw;
mod bench_switch;
mod chat;
mod conformance;
mod eval;
mod export;
mod generate;
mod info;
mod models;
mod paths;
mod pte;
mod route;
mod runtime;
mod serve;
mod stats;
mod tune;
mod web;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "arny",
    version,
    about = "Run small language models on this device"
)]
struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ask the assistant: the gateway picks a specialist (or the cloud), the
    /// answer streams to stdout, the routing decision goes to stderr.
    Ask(ask::Args),
    /// Route JSON lines `{"text": ...}` from stdin; one decision per line.
    Route(route::Args),
    /// Serve the assistant as an OpenAI-compatible API on 127.0.0.1.
    Serve(serve::Args),
    /// Serve the browser demo (bindings/web-demo) and the default model on
    /// 127.0.0.1; the page runs the SDK itself through WebAssembly.
    Web(web::Args),
    /// Answer one prompt, streaming the answer to stdout.
    Generate(generate::Args),
    /// Interactive multi-turn chat that keeps the KV cache between turns.
    Chat(chat::Args),
    /// Describe a model: architecture, size, quantization, chat template.
    Info(info::Args),
    /// Prompt-processing and generation throughput, against raw llama.cpp.
    Bench(bench::Args),
    /// Compare two engines on one model: teacher-forced top-1 agreement,
    /// KL divergence and greedy continuations.
    Conformance(conformance::Args),
    /// List and fetch the models Arny knows.
    #[command(subcommand)]
    Models(models::Command),
    /// Convert a model for another engine (GGUF to ExecuTorch `.pte`).
    #[command(subcommand)]
    Export(export::Command),
    /// Task accuracy on JSONL examples with answers (greedy, any engine,
    /// optionally with --adapter): tuned against base.
    Eval(eval::Args),
    /// Fine-tune a LoRA adapter (a specialist) from JSONL examples, on the
    /// CPU, with PEFT; writes a GGUF LoRA that `--adapter` loads.
    Tune(tune::Args),
}

fn main() -> ExitCode {
    // A panic is a bug; report it on one line rather than a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error: {msg}{at}");
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Ask(a) => ask::run(a),
        Command::Route(a) => route::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Web(a) => web::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Info(a) => info::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Conformance(a) => conformance::run(a),
        Command::Models(c) => models::run(c),
        Command::Export(c) => export::run(c),
        Command::Tune(a) => tune::run(a),
        Command::Eval(a) => eval::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined with ": ".
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}

/// `--help` and `--version` print as clap prints them; a bad command line
/// is one line on stderr, like every other error (clap's own message spans
/// several: the value, the choices, a hint).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
    }
    let text = e.render().to_string();
    let line = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .take_while(|l| !l.starts_with("Usage:"))
        .collect::<Vec<_>>()
        .join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    eprintln!("error: {line}");
    ExitCode::from(2)
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    // llama.cpp's own error lines are carried in Arny's typed errors, so at
    // the default level they would only repeat the one-line message.
    let default = match verbose {
        0 => "warn,llama.cpp=off",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .try_init();
}
