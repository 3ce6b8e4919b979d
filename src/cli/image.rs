//! `skiff image import|ls|rm`.

use std::path::PathBuf;

use super::client::Client;
use super::images::{IMAGES_PATH, ImagesArgs};
use super::print::images::ImageSummary;
use super::rmi::RmiArgs;
use super::{Error, out};

/// Arguments of `skiff image`.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// Image subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Import an OCI layout or docker-save archive from a local path.
    Import(ImportArgs),
    /// List images (same as `skiff images`).
    #[command(alias = "list")]
    Ls(ImagesArgs),
    /// Remove images (same as `skiff rmi`).
    #[command(alias = "remove")]
    Rm(RmiArgs),
}

/// Arguments of `skiff image import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Archive or directory to import; skiffd reads it from this machine.
    pub path: PathBuf,
}

/// Runs `skiff image ...`.
pub async fn run(client: &Client, args: ImageArgs) -> Result<u8, Error> {
    match args.command {
        ImageCommand::Import(a) => import(client, a).await,
        ImageCommand::Ls(a) => super::images::run(client, a).await,
        ImageCommand::Rm(a) => super::rmi::run(client, a).await,
    }
}

async fn import(client: &Client, args: ImportArgs) -> Result<u8, Error> {
    // skiffd resolves the path itself, from its own working directory: send it absolute.
    let path = std::fs::canonicalize(&args.path).map_err(|source| Error::LocalFile {
        path: args.path.clone(),
        source,
    })?;
    let body = serde_json::json!({ "path": path.to_string_lossy() });
    let images: Vec<ImageSummary> = client
        .post_json(&format!("{IMAGES_PATH}/import"), &body)
        .await?;
    out(&loaded_lines(&images))?;
    Ok(0)
}

/// `docker load`'s output: `Loaded image: NAME` per name, `Loaded image ID: ID` otherwise.
pub fn loaded_lines(images: &[ImageSummary]) -> String {
    let mut text = String::new();
    for image in images {
        if image.names.is_empty() {
            text.push_str(&format!("Loaded image ID: {}\n", image.id));
        }
        for name in &image.names {
            text.push_str(&format!("Loaded image: {name}\n"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_output() {
        let images: Vec<ImageSummary> = serde_json::from_str(
            r#"[{"id":"sha256:aa","names":["docker.io/library/busybox:latest","busybox:1"],"size":1},
                {"id":"sha256:bb","names":[],"size":1}]"#,
        )
        .expect("json");
        assert_eq!(
            loaded_lines(&images),
            "Loaded image: docker.io/library/busybox:latest\nLoaded image: busybox:1\nLoaded image ID: sha256:bb\n"
        );
    }
}
