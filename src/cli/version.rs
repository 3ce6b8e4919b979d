//! `skiff version`.

use super::{Error, out};

/// Arguments of `skiff version`.
#[derive(Debug, clap::Args)]
pub struct VersionArgs {}

/// Prints the client version.
pub fn run(_args: VersionArgs) -> Result<u8, Error> {
    out(&format!("skiff version {}\n", env!("CARGO_PKG_VERSION")))?;
    Ok(0)
}
