//! `attune-lab`: the thin binary. Everything lives in the library.

use clap::Parser;

/// The benchmark measures the origin's pipeline as `attune-origin serve` runs it, so it runs
/// on the same allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = attune_lab::cli::Cli::parse();
    attune_origin::init_logging(cli.global.log_json);
    attune_lab::cli::run(cli).await?;
    Ok(())
}
