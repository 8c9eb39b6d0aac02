//! `attune-origin`: the thin binary. Everything lives in the library.

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// The pipeline allocates small strings per event (ids, users, items) and user states per
/// checkpoint; mimalloc serves that pattern markedly faster than glibc's malloc (measured with
/// `attune-origin bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = attune_origin::cli::Cli::parse();
    let filter = EnvFilter::try_from_env("ATTUNE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.global.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    attune_origin::cli::run(cli).await?;
    Ok(())
}
