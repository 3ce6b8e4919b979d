//! `skiff image import|ls|rm|inspect|export|prune`.

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
    /// Pull an image from a registry (same as `skiff pull`).
    Pull(super::pull::PullArgs),
    /// Print an image as JSON: id, names, digest, config, layers, size.
    Inspect(InspectArgs),
    /// Write an image to a local path as an OCI layout, OCI archive or docker archive.
    Export(ExportArgs),
    /// Remove every image that no container uses.
    Prune(PruneArgs),
}

/// Arguments of `skiff image inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Image reference or ID.
    #[arg(value_name = "REF")]
    pub reference: String,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// An OCI image layout directory (skopeo's `oci:DIR`).
    Oci,
    /// An OCI image layout in a tar file (`oci-archive:FILE`).
    OciArchive,
    /// A `docker save` tar (`docker-archive:FILE`, `docker load`).
    DockerArchive,
}

/// Arguments of `skiff image export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Image reference or ID.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Where to write it (skiffd writes it on this machine) [default format: oci-archive for a
    /// path ending in .tar, else oci].
    pub path: PathBuf,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: Option<ExportFormat>,
}

/// Arguments of `skiff image prune`.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {}

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
        ImageCommand::Pull(a) => super::pull::run(client, a).await,
        ImageCommand::Inspect(a) => inspect(client, a).await,
        ImageCommand::Export(a) => export(client, a).await,
        ImageCommand::Prune(_) => prune(client).await,
    }
}

async fn inspect(client: &Client, args: InspectArgs) -> Result<u8, Error> {
    let path = super::rmi::rmi_path(&args.reference);
    let image: images::Image = client.get_json(&path).await?;
    let text = serde_json::to_string_pretty(&inspect_json(&image)).map_err(|e| Error::Render {
        format: "json",
        message: e.to_string(),
    })?;
    out(&format!("{text}\n"))?;
    Ok(0)
}

/// `skiff image inspect`'s document.
pub fn inspect_json(image: &images::Image) -> serde_json::Value {
    serde_json::json!({
        "id": image.id,
        "names": image.names,
        "digest": image.manifest_digest,
        "created": image.created,
        "size": image.size,
        "config": {
            "entrypoint": image.config.entrypoint,
            "cmd": image.config.cmd,
            "env": image.config.env,
            "workingDir": image.config.working_dir,
            "user": image.config.user,
            "exposedPorts": image.config.exposed_ports,
            "labels": image.config.labels,
        },
        "layers": image.diff_ids,
    })
}

async fn export(client: &Client, args: ExportArgs) -> Result<u8, Error> {
    let format = args
        .format
        .unwrap_or(if args.path.extension().is_some_and(|e| e == "tar") {
            ExportFormat::OciArchive
        } else {
            ExportFormat::Oci
        });
    // skiffd writes the path from its own working directory: send it absolute.
    let local = |source| Error::LocalFile {
        path: args.path.clone(),
        source,
    };
    let cwd = std::env::current_dir().map_err(local)?;
    let path = cwd.join(&args.path);
    let format = match format {
        ExportFormat::Oci => "oci",
        ExportFormat::OciArchive => "oci-archive",
        ExportFormat::DockerArchive => "docker-archive",
    };
    let body = serde_json::json!({
        "reference": args.reference,
        "path": path.to_string_lossy(),
        "format": format,
    });
    let image: images::Image = client
        .post_json(&format!("{IMAGES_PATH}/export"), &body)
        .await?;
    out(&format!(
        "Exported {} ({}) to {format}:{}\n",
        args.reference,
        image.id,
        path.display()
    ))?;
    Ok(0)
}

async fn prune(client: &Client) -> Result<u8, Error> {
    #[derive(serde::Deserialize)]
    struct Report {
        removed: Vec<String>,
        freed: u64,
    }
    let r: Report = client
        .post_json(&format!("{IMAGES_PATH}/prune"), &serde_json::json!({}))
        .await?;
    let mut text = String::new();
    for id in &r.removed {
        text.push_str(&format!("Deleted: {id}\n"));
    }
    text.push_str(&format!(
        "Total reclaimed space: {}\n",
        super::pull::size(r.freed)
    ));
    out(&text)?;
    Ok(0)
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
