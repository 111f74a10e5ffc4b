//! `tvix-oci-build`: the command line front door. Parses arguments and calls
//! into the library crates; all logic lives there.

use std::process::ExitCode;

use clap::Parser;

mod args;
mod browse;
mod build_inputs;
mod commands;
mod exit;
mod nix_checks;
mod nix_db;
mod nix_inputs;
mod nix_paths;
mod out_link;
mod progress;
mod register;
mod store;
mod upload;
mod web;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli.log_level())),
        )
        .with_writer(std::io::stderr)
        // Colours on a terminal only: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match rt.block_on(commands::dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}");
            if !msg.is_empty() {
                eprintln!("error: {msg}");
            }
            ExitCode::from(exit::code_of(&e))
        }
    }
}
