//! `blobvault bench`: a load generator over the wire protocol (see issue "Performance").

/// Options of `blobvault bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Server to load; with none, an in-process server on a temp store is started.
    #[arg(long)]
    pub server: Option<std::net::SocketAddr>,
}

/// Runs the load generator and prints its report.
pub fn run_cli(args: &BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let _ = args;
    Err("bench is not implemented yet".into())
}
