//! `skiff kubeconfig`: prints the kubeconfig skiffd wrote for its TLS API
//! (`<root-dir>/pki/admin.kubeconfig`: server, CA, admin token, context = node name).
//! Reads the file directly, so it needs root like skiffd's root dir.

use std::path::PathBuf;

use super::{Error, out};

/// Arguments of `skiff kubeconfig`.
#[derive(Debug, clap::Args)]
pub struct KubeconfigArgs {
    /// skiffd's root dir (its --root-dir).
    #[arg(long, env = "SKIFF_ROOT_DIR", default_value = "/var/lib/skiff")]
    pub root_dir: PathBuf,
    /// Server URL to put in instead of skiffd's listen address, e.g. https://node-a:6443.
    #[arg(long)]
    pub server: Option<String>,
}

/// Prints the kubeconfig, with `--server` put in when given.
pub fn run(args: KubeconfigArgs) -> Result<u8, Error> {
    let path = crate::pki::kubeconfig_path(&args.root_dir);
    let text = std::fs::read_to_string(&path).map_err(|source| Error::LocalFile {
        path: path.clone(),
        source: if source.kind() == std::io::ErrorKind::NotFound {
            std::io::Error::new(
                source.kind(),
                "not found: skiffd writes it at start unless started with --api-listen none (or another --root-dir)",
            )
        } else {
            source
        },
    })?;
    let Some(server) = args.server else {
        out(&text)?;
        return Ok(0);
    };
    let mut doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| Error::Render {
            format: "kubeconfig",
            message: format!("{}: {e}", path.display()),
        })?;
    if let Some(clusters) = doc.get_mut("clusters").and_then(|c| c.as_sequence_mut()) {
        for c in clusters {
            if let Some(cluster) = c.get_mut("cluster").and_then(|c| c.as_mapping_mut()) {
                cluster.insert("server".into(), server.clone().into());
            }
        }
    }
    let text = serde_yaml_ng::to_string(&doc).map_err(|e| Error::Render {
        format: "kubeconfig",
        message: e.to_string(),
    })?;
    out(&text)?;
    Ok(0)
}
