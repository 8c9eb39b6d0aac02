//! `attune-origin`: the thin binary. Everything lives in the library.

use clap::Parser;

/// The pipeline allocates small strings per event (ids, users, items) and user states per
/// checkpoint; mimalloc serves that pattern markedly faster than glibc's malloc (`attune-lab bench`
/// measures the pipeline).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = attune_origin::cli::Cli::parse();
    attune_origin::init_logging(cli.global.log_json);
    attune_origin::cli::run(cli).await?;
    Ok(())
}
