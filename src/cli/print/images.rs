//! The `skiff images` table, laid out like `docker images`.

use std::fmt::Write;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::cli::humanize::{docker_duration, human_size};
use crate::cli::tabwriter::{self, DOCKER};

/// One image as listed by `GET /apis/skiff.dev/v1/images`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// Image (config) digest, `sha256:<hex>`.
    pub id: String,
    /// References naming this image, e.g. `docker.io/library/busybox:latest`.
    #[serde(default)]
    pub names: Vec<String>,
    /// Digest of the manifest the image was imported from.
    #[serde(default)]
    pub manifest_digest: Option<String>,
    /// Size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Creation time: RFC 3339 text or Unix seconds.
    #[serde(default)]
    pub created: Option<serde_json::Value>,
}

impl ImageSummary {
    /// The creation time, whichever way the server wrote it.
    pub fn created_at(&self) -> Option<Timestamp> {
        match self.created.as_ref()? {
            serde_json::Value::String(s) => s.parse().ok(),
            serde_json::Value::Number(n) => Timestamp::from_second(n.as_i64()?).ok(),
            _ => None,
        }
    }

    /// The IMAGE ID column: the first 12 hex digits.
    pub fn short_id(&self) -> &str {
        let hex = self.id.strip_prefix("sha256:").unwrap_or(&self.id);
        hex.get(..12).unwrap_or(hex)
    }
}

/// Splits a reference into REPOSITORY and TAG: `repo:tag`, `repo@digest` (tag `<none>`),
/// or a bare repo (tag `<none>`). A `:` before the last `/` is a registry port.
pub fn split_reference(name: &str) -> (&str, &str) {
    if let Some((repo, _digest)) = name.split_once('@') {
        return (repo, "<none>");
    }
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], &name[last_slash + i + 1..]),
        None => (name, "<none>"),
    }
}

/// Renders the table: one row per name, newest images first.
pub fn images_table(images: &[ImageSummary], now: Timestamp) -> String {
    let mut sorted: Vec<&ImageSummary> = images.iter().collect();
    sorted.sort_by_key(|i| std::cmp::Reverse(i.created_at()));
    let mut text = String::from("REPOSITORY\tTAG\tIMAGE ID\tCREATED\tSIZE\n");
    for image in sorted {
        let created = match image.created_at() {
            Some(t) => format!("{} ago", docker_duration(now.duration_since(t))),
            None => "N/A".to_owned(),
        };
        let rows: Vec<(&str, &str)> = if image.names.is_empty() {
            vec![("<none>", "<none>")]
        } else {
            image.names.iter().map(|n| split_reference(n)).collect()
        };
        for (repo, tag) in rows {
            let _ = writeln!(
                text,
                "{repo}\t{tag}\t{}\t{created}\t{}",
                image.short_id(),
                human_size(image.size)
            );
        }
    }
    tabwriter::align(&text, DOCKER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::print::pods::tests::now;

    #[test]
    fn references() {
        assert_eq!(
            split_reference("docker.io/library/busybox:latest"),
            ("docker.io/library/busybox", "latest")
        );
        assert_eq!(
            split_reference("localhost:5000/app"),
            ("localhost:5000/app", "<none>")
        );
        assert_eq!(
            split_reference("localhost:5000/app:v1"),
            ("localhost:5000/app", "v1")
        );
        assert_eq!(split_reference("app@sha256:abcd"), ("app", "<none>"));
    }

    #[test]
    fn table() {
        let images: Vec<ImageSummary> = serde_json::from_str(
            r#"[
              {"id":"sha256:0123456789abcdef0123","names":[],"size":5000,"created":1714557600},
              {"id":"sha256:fedcba9876543210ffff","names":["docker.io/library/busybox:latest","registry.k8s.io/pause:3.9"],
               "manifest_digest":"sha256:1111","size":4261574,"created":"2024-04-17T12:00:00Z"}
            ]"#,
        )
        .expect("json");
        assert_eq!(
            images_table(&images, now()),
            "REPOSITORY                  TAG       IMAGE ID       CREATED       SIZE\n\
             <none>                      <none>    0123456789ab   2 hours ago   5kB\n\
             docker.io/library/busybox   latest    fedcba987654   2 weeks ago   4.26MB\n\
             registry.k8s.io/pause       3.9       fedcba987654   2 weeks ago   4.26MB\n"
        );
    }
}
