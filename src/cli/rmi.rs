//! `skiff rmi REF...`: removes images from skiffd's store.

use super::client::{Client, encode_component};
use super::images::IMAGES_PATH;
use super::{Error, out};

/// Arguments of `skiff rmi` and `skiff image rm`.
#[derive(Debug, clap::Args)]
pub struct RmiArgs {
    /// Image references or IDs to remove.
    #[arg(required = true, value_name = "REF")]
    pub refs: Vec<String>,
}

/// Runs `skiff rmi`; tries every reference and fails if any failed, as docker does.
pub async fn run(client: &Client, args: RmiArgs) -> Result<u8, Error> {
    let mut status = 0;
    for r in &args.refs {
        match client.delete(&rmi_path(r)).await {
            Ok(_) => out(&format!("Deleted: {r}\n"))?,
            Err(err @ super::client::ClientError::Server(_)) => {
                eprintln!("{err}");
                status = 1;
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(status)
}

/// `DELETE` path for one reference, percent-encoded as a single segment.
pub fn rmi_path(reference: &str) -> String {
    format!("{IMAGES_PATH}/{}", encode_component(reference))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_is_one_segment() {
        assert_eq!(
            rmi_path("docker.io/library/busybox:latest"),
            "/apis/skiff.dev/v1/images/docker.io%2Flibrary%2Fbusybox%3Alatest"
        );
        assert_eq!(
            rmi_path("sha256:abc"),
            "/apis/skiff.dev/v1/images/sha256%3Aabc"
        );
    }
}
