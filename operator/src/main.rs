//! `kdps-operator`: reconciles ProvisioningServices and validates kdps.io resources.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

mod crdgen;

/// The kdps operator.
#[derive(Debug, Parser)]
#[command(name = "kdps-operator", version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print all kdps.io CustomResourceDefinitions as multi-document YAML, or write one file
    /// per CRD with --out-dir.
    Crdgen {
        /// Write `<plural>.kdps.io.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Run the operator (the default).
    Run,
}

fn main() -> anyhow::Result<ExitCode> {
    let Args { command } = Args::parse();
    match command {
        Some(Command::Crdgen { out_dir }) => {
            crdgen::run(out_dir.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Run) | None => {
            eprintln!("kdps-operator run: not implemented yet");
            Ok(ExitCode::from(2))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        super::Args::command().debug_assert();
    }
}
