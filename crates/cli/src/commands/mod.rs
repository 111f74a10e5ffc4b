//! One file per command of `tvix-oci-build`, and [`dispatch`], which opens
//! the stores and calls the one the arguments name. Each command parses
//! nothing itself (see `args.rs`) and does its work through the library
//! crates.

mod build;
mod cat;
mod export;
mod import;
mod ls;
mod mount;
mod remote;
mod report;
mod run;
mod serve;
mod spec;

pub use build::{BuildArgs, Builder, Built, Prepared, read_drv};
pub use run::{read_request, shutdown_signal, shutdown_signal_now};

use crate::args::{Cli, Command};
use crate::store::{data_dir, open_stores, store_urls};

/// Runs the command `cli` names.
pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    if let Command::Spec { request, limits } = &cli.command {
        return spec::spec(request, &limits.limits());
    }
    if let Command::Run(args) = &cli.command
        && let Some(url) = &args.remote
    {
        return remote::run_remote(args, url, cli.store_timeouts()).await;
    }
    if let Command::Build(args) = &cli.command
        && let Some(url) = &args.remote
    {
        return build::build_remote(args, url, cli.store_timeouts()).await;
    }
    let (blobs, dirs) = open_stores(&cli)
        .await
        .map_err(|e| crate::exit::exit(crate::exit::HOST, e))?;
    match &cli.command {
        Command::Run(args) => run::run(args, blobs, dirs).await?,
        Command::Build(args) => {
            let (b, d) = store_urls(&cli);
            let map = crate::nix_paths::NixPaths::new(&data_dir(), &b, &d);
            build::build(args, &map, blobs, dirs, None).await?
        }
        Command::Spec { .. } => {}
        Command::Ls { node } => ls::ls(node, &*blobs, &*dirs).await?,
        Command::Cat { node } => cat::cat(node, &*blobs, &*dirs).await?,
        Command::Mount { args } => mount::mount(args, blobs, dirs).await?,
        Command::Import { paths } => import::import(paths, blobs, &*dirs).await?,
        Command::Serve {
            listen,
            http,
            upload_idle_timeout,
            exec,
        } => {
            let http = http.as_deref();
            serve::serve(listen, http, *upload_idle_timeout, exec, blobs, dirs).await?
        }
        Command::Export { digest, dest } => export::export(digest, dest, blobs, &*dirs).await?,
    }
    Ok(())
}
