//! `fhir-binary-proxy`: serves FHIR Binary resources natively, as FHIR JSON or as FHIR XML, in
//! front of a FHIR server that only answers Binary JSON. See `--help` and the README.

use std::io::IsTerminal;

use clap::Parser;
use tower_fhir_binary::proxy::{run, Args};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // RUST_LOG takes `info`, `warn`, `fhir_binary_proxy=debug,info` and the like.
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(filter)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fhir-binary-proxy: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fhir-binary-proxy: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
