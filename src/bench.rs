//! Benchmarks (work in progress in this commit).

use clap::Args;

#[derive(Args)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("no benchmark scenarios yet")
}
