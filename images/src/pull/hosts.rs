//! Per-registry connection settings: plain HTTP, TLS trust, mirrors.
//!
//! One TOML file (`/etc/skiff/registries.toml` by convention), in the spirit of containerd's
//! `hosts.toml` but for all registries at once:
//!
//! ```toml
//! # Docker Hub through a local mirror first, then Docker Hub itself.
//! [registry."docker.io"]
//! mirrors = ["http://10.0.0.5:5000"]
//!
//! # A registry that speaks plain HTTP.
//! [registry."10.0.0.5:5000"]
//! plain_http = true
//!
//! # A registry with a private CA.
//! [registry."registry.corp.example"]
//! ca_file = "/etc/skiff/corp-ca.pem"
//!
//! # A registry with a certificate that cannot be verified (not recommended).
//! [registry."lab.example:5000"]
//! skip_verify = true
//! ```
//!
//! Keys are registry hosts as in a normalised reference (`docker.io`, `host:port`). A mirror's
//! own `plain_http`/`ca_file`/`skip_verify` come from its own entry (keyed by its `host:port`),
//! or from the scheme of its URL. Without an entry, a registry is reached over HTTPS with the
//! system roots plus the puller's extra CA file, except loopback registries (`localhost`,
//! `127.0.0.0/8`, `::1`), which are tried over HTTPS and then plain HTTP, as docker does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::PullError;

/// The registries file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegistriesConfig {
    /// Settings by registry host (`docker.io`, `registry.example.com:5000`).
    #[serde(default)]
    pub registry: BTreeMap<String, RegistryConfig>,
}

/// Settings for one registry host.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Speak plain HTTP instead of HTTPS.
    #[serde(default)]
    pub plain_http: bool,
    /// Accept any TLS certificate (still encrypted, but not authenticated).
    #[serde(default)]
    pub skip_verify: bool,
    /// A PEM file of CA certificates trusted for this registry on top of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Mirror base URLs (`http://host:port`, `https://host[:port]`), tried in order before the
    /// registry itself.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// Never fall back to the registry itself when every mirror fails.
    #[serde(default)]
    pub mirrors_only: bool,
}

impl RegistriesConfig {
    /// Parses the TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<RegistriesConfig, PullError> {
        let config: RegistriesConfig = toml::from_str(text).map_err(|e| PullError::Config {
            origin: origin.to_owned(),
            reason: e.to_string(),
        })?;
        for (host, r) in &config.registry {
            for m in &r.mirrors {
                parse_url(m).ok_or_else(|| PullError::Config {
                    origin: origin.to_owned(),
                    reason: format!(
                        "registry {host:?}: mirror {m:?} is not an http:// or https:// URL"
                    ),
                })?;
            }
        }
        Ok(config)
    }

    /// Reads the file; a missing file is the empty configuration.
    pub fn load(path: &Path) -> Result<RegistriesConfig, PullError> {
        match std::fs::read_to_string(path) {
            Ok(text) => RegistriesConfig::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RegistriesConfig::default()),
            Err(e) => Err(PullError::Config {
                origin: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// The endpoints to try for `registry`, in order.
    pub(crate) fn endpoints(&self, registry: &str, extra_ca: Option<&Path>) -> Vec<Endpoint> {
        let own = self.registry.get(registry);
        let mut out = Vec::new();
        for mirror in own.map(|r| r.mirrors.as_slice()).unwrap_or_default() {
            let Some((https, authority, prefix)) = parse_url(mirror) else {
                continue;
            };
            let settings = self.registry.get(&authority);
            let https = https && !settings.is_some_and(|s| s.plain_http);
            out.push(Endpoint {
                https,
                authority: authority.clone(),
                prefix,
                tls: tls_for(settings, extra_ca),
                mirror: true,
                fallback: false,
            });
        }
        if own.is_some_and(|r| r.mirrors_only && !r.mirrors.is_empty()) {
            return out;
        }
        let authority = match registry {
            // Docker Hub's API lives on another name than its references use.
            "docker.io" => "registry-1.docker.io".to_owned(),
            other => other.to_owned(),
        };
        let tls = tls_for(own, extra_ca);
        match own {
            Some(r) if r.plain_http => out.push(Endpoint::plain(authority)),
            Some(_) => out.push(Endpoint::https(authority, tls)),
            None if is_loopback(registry) => {
                out.push(Endpoint::https(authority.clone(), tls));
                out.push(Endpoint {
                    fallback: true,
                    ..Endpoint::plain(authority)
                });
            }
            None => out.push(Endpoint::https(authority, tls)),
        }
        out
    }
}

fn tls_for(settings: Option<&RegistryConfig>, extra_ca: Option<&Path>) -> TlsSettings {
    let mut ca_files: Vec<PathBuf> = extra_ca.map(Path::to_owned).into_iter().collect();
    if let Some(ca) = settings.and_then(|s| s.ca_file.clone()) {
        ca_files.push(ca);
    }
    TlsSettings {
        ca_files,
        skip_verify: settings.is_some_and(|s| s.skip_verify),
    }
}

/// `https://host:port/prefix` to (https?, `host:port`, `/prefix` without trailing `/`).
fn parse_url(url: &str) -> Option<(bool, String, String)> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return None;
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let path = path.strip_suffix("/v2").unwrap_or(path);
    if authority.is_empty() {
        return None;
    }
    Some((https, authority.to_owned(), path.to_owned()))
}

fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// TLS trust settings for an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct TlsSettings {
    /// Extra CA bundles, on top of the system roots.
    pub(crate) ca_files: Vec<PathBuf>,
    /// Accept any certificate.
    pub(crate) skip_verify: bool,
}

/// One place to send registry API requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// HTTPS (else plain HTTP).
    pub(crate) https: bool,
    /// `host[:port]`.
    pub(crate) authority: String,
    /// Path prefix before `/v2/` (mirrors behind a path), no trailing `/`.
    pub(crate) prefix: String,
    /// TLS trust.
    pub(crate) tls: TlsSettings,
    /// A mirror rather than the registry itself.
    pub(crate) mirror: bool,
    /// The plain-HTTP retry of a loopback registry that failed over HTTPS.
    pub(crate) fallback: bool,
}

impl Endpoint {
    fn plain(authority: String) -> Endpoint {
        Endpoint {
            https: false,
            authority,
            prefix: String::new(),
            tls: TlsSettings::default(),
            mirror: false,
            fallback: false,
        }
    }

    fn https(authority: String, tls: TlsSettings) -> Endpoint {
        Endpoint {
            https: true,
            authority,
            prefix: String::new(),
            tls,
            mirror: false,
            fallback: false,
        }
    }

    /// `scheme://authority/prefix/v2/<path>`.
    pub(crate) fn url(&self, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{}/v2/{path}", self.authority, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders_endpoints() {
        let c = RegistriesConfig::parse(
            r#"
            [registry."docker.io"]
            mirrors = ["http://10.0.0.5:5000", "https://mirror.example/base/"]
            [registry."10.0.0.5:5000"]
            plain_http = true
            [registry."reg.example"]
            ca_file = "/ca.pem"
            skip_verify = true
            [registry."only.example"]
            mirrors = ["https://m.example"]
            mirrors_only = true
            "#,
            "t",
        )
        .unwrap();
        let hub = c.endpoints("docker.io", Some(Path::new("/extra.pem")));
        let urls: Vec<String> = hub.iter().map(|e| e.url("x")).collect();
        assert_eq!(
            urls,
            [
                "http://10.0.0.5:5000/v2/x",
                "https://mirror.example/base/v2/x",
                "https://registry-1.docker.io/v2/x"
            ]
        );
        assert!(hub[0].mirror && !hub[2].mirror);
        let reg = c.endpoints("reg.example", None);
        assert_eq!(reg.len(), 1);
        assert!(reg[0].tls.skip_verify);
        assert_eq!(reg[0].tls.ca_files, [PathBuf::from("/ca.pem")]);
        assert_eq!(c.endpoints("only.example", None).len(), 1);
        let local: Vec<bool> = c
            .endpoints("127.0.0.1:5000", None)
            .iter()
            .map(|e| e.https)
            .collect();
        assert_eq!(local, [true, false]);
        assert_eq!(c.endpoints("quay.io", None).len(), 1);
    }

    #[test]
    fn rejects_unknown_fields_and_bad_mirrors() {
        let err = RegistriesConfig::parse("[registry.\"a\"]\ninsecure = true\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("f.toml") && err.contains("insecure"), "{err}");
        let err = RegistriesConfig::parse("[registry.\"a\"]\nmirrors = [\"ftp://x\"]\n", "f")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ftp://x"), "{err}");
    }
}
