//! `kdps-operator`: reconciles ProvisioningServices and validates kdps.io resources.
//! Everything lives in the library; see [`kdps_operator::cli`].

use std::process::ExitCode;

fn main() -> anyhow::Result<ExitCode> {
    Ok(kdps_operator::cli::Args::parse_and_run()?)
}
