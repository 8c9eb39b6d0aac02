//! `attune-lab`: the thin binary. Everything lives in the library.

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// The benchmark measures the origin's pipeline as `attune-origin serve` runs it, so it runs
/// on the same allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = attune_lab::cli::Cli::parse();
    let filter = EnvFilter::try_from_env("ATTUNE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.global.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    attune_lab::cli::run(cli).await?;
    Ok(())
}
