//! Registry credentials and `WWW-Authenticate` challenges.
//!
//! Credentials come from docker-style `config.json` files (the node's, given by path) and from
//! the contents of `kubernetes.io/dockerconfigjson` Secrets (`imagePullSecrets`), which have the
//! same format. Both may also be the legacy `.dockercfg` shape (the `auths` map at top level).
//! Keys are matched the way the kubelet does: by registry host (with `*` wildcards per DNS
//! label, `index.docker.io`/`registry-1.docker.io`/`docker.io` all meaning Docker Hub) and, if
//! the key has a path, by repository path prefix; longer matches are tried first.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::PullError;

/// A username and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credential {
    /// The value of an `Authorization: Basic` header.
    pub(crate) fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", STANDARD.encode(raw))
    }
}

/// An ordered list of credentials keyed by registry (`host[:port][/path]`, optionally with a
/// scheme, as docker writes them). Earlier entries win over later ones of equal specificity,
/// so add pod secrets before the node's config file.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    entries: Vec<(String, Credential)>,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: Option<BTreeMap<String, AuthEntry>>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl Credentials {
    /// No credentials.
    pub fn new() -> Credentials {
        Credentials::default()
    }

    /// Adds a credential for `server` (`registry.example.com`, `host:5000/team`,
    /// `https://index.docker.io/v1/`, `*.example.com`).
    pub fn add(&mut self, server: &str, credential: Credential) {
        self.entries.push((server.to_owned(), credential));
    }

    /// Appends all of `other`'s credentials (they rank after the ones already here).
    pub fn extend(&mut self, other: Credentials) {
        self.entries.extend(other.entries);
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Parses a docker `config.json` (`{"auths": {SERVER: {"auth": base64(user:pass)}}}` or
    /// with `username`/`password`), or a legacy `.dockercfg` (the map at top level). This is
    /// also the `.dockerconfigjson` key of a `kubernetes.io/dockerconfigjson` Secret. Entries
    /// with neither `auth` nor a username (credential helpers, identity tokens) are skipped.
    pub fn from_docker_config(bytes: &[u8], origin: &str) -> Result<Credentials, PullError> {
        let invalid = |reason: String| PullError::Credentials {
            origin: origin.to_owned(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        let auths: BTreeMap<String, AuthEntry> = if value.get("auths").is_some() {
            serde_json::from_value::<DockerConfig>(value)
                .map_err(|e| invalid(e.to_string()))?
                .auths
                .unwrap_or_default()
        } else if value.is_object() {
            // Legacy .dockercfg: only keep object-valued entries (other keys are settings).
            let map = value.as_object().into_iter().flatten();
            map.filter(|(_, v)| v.is_object())
                .filter_map(|(k, v)| {
                    serde_json::from_value::<AuthEntry>(v.clone())
                        .ok()
                        .map(|e| (k.clone(), e))
                })
                .collect()
        } else {
            return Err(invalid("not a JSON object".into()));
        };
        let mut creds = Credentials::new();
        for (server, entry) in auths {
            let credential = match (&entry.auth, &entry.username) {
                (Some(auth), _) if !auth.is_empty() => {
                    let decoded = STANDARD
                        .decode(auth.trim())
                        .map_err(|e| invalid(format!("{server}: auth is not base64: {e}")))?;
                    let decoded = String::from_utf8(decoded)
                        .map_err(|_| invalid(format!("{server}: auth is not UTF-8")))?;
                    let (user, pass) = decoded
                        .split_once(':')
                        .ok_or_else(|| invalid(format!("{server}: auth is not user:password")))?;
                    Credential {
                        username: user.to_owned(),
                        password: pass.to_owned(),
                    }
                }
                (_, Some(user)) if !user.is_empty() => Credential {
                    username: user.clone(),
                    password: entry.password.clone().unwrap_or_default(),
                },
                _ => continue,
            };
            creds.add(&server, credential);
        }
        Ok(creds)
    }

    /// Reads a docker `config.json`; a missing file gives no credentials.
    pub fn from_docker_config_file(path: &Path) -> Result<Credentials, PullError> {
        match std::fs::read(path) {
            Ok(bytes) => Credentials::from_docker_config(&bytes, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Credentials::new()),
            Err(e) => Err(PullError::Credentials {
                origin: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// The credentials that apply to `repository` on `registry` (as in a normalised reference:
    /// `docker.io`, `library/busybox`), most specific first.
    pub fn matching(&self, registry: &str, repository: &str) -> Vec<&Credential> {
        let mut found: Vec<(usize, usize, &Credential)> = Vec::new();
        for (i, (key, cred)) in self.entries.iter().enumerate() {
            let (host, path) = split_key(key);
            if !host_matches(&host, registry) {
                continue;
            }
            let path_ok = path.is_empty()
                || repository == path
                || repository.starts_with(&format!("{path}/"));
            if path_ok {
                found.push((path.len(), i, cred));
            }
        }
        // Longest path first, then the order they were added.
        found.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        found.into_iter().map(|(_, _, c)| c).collect()
    }
}

/// `https://host:port/path/` to (`host:port`, `path`), with docker's `/v1/`/`/v2/` suffixes and
/// Docker Hub aliases normalised.
fn split_key(key: &str) -> (String, String) {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let (host, path) = key.split_once('/').unwrap_or((key, ""));
    let path = path.trim_end_matches('/');
    let path = match path {
        "v1" | "v2" => "",
        p => p,
    };
    (canonical_host(host), path.to_owned())
}

fn canonical_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        _ => host,
    }
}

/// Host match with kubelet's glob rule: same number of labels, `*` matches one label.
fn host_matches(pattern: &str, registry: &str) -> bool {
    let registry = canonical_host(registry);
    let (p_host, p_port) = pattern.split_once(':').unwrap_or((pattern, ""));
    let (r_host, r_port) = registry.split_once(':').unwrap_or((&registry, ""));
    if p_port != r_port {
        return false;
    }
    let p: Vec<&str> = p_host.split('.').collect();
    let r: Vec<&str> = r_host.split('.').collect();
    p.len() == r.len() && p.iter().zip(&r).all(|(p, r)| label_matches(p, r))
}

fn label_matches(pattern: &str, label: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == label,
        Some((prefix, suffix)) => {
            label.len() >= prefix.len() + suffix.len()
                && label.starts_with(prefix)
                && label.ends_with(suffix)
        }
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// `bearer` or `basic`, lowercased.
    pub(crate) scheme: String,
    /// Parameters (`realm`, `service`, `scope`, ...), keys lowercased.
    pub(crate) params: BTreeMap<String, String>,
}

/// Parses `Bearer realm="https://auth",service="registry",scope="repository:a:pull"`.
/// Only the first challenge of the header is read (registries send one).
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            // A token68 or a following challenge: stop here.
            break;
        }
        chars.next();
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(escaped) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_owned();
        }
        params.insert(key.to_ascii_lowercase(), value);
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:library/busybox:pull");
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");
        let c = parse_challenge(r#"Bearer realm="a\"b", error=invalid_token"#).unwrap();
        assert_eq!(c.params["realm"], "a\"b");
        assert_eq!(c.params["error"], "invalid_token");
    }

    #[test]
    fn docker_config_formats() {
        let json = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="},
            "reg.example.com:5000":{"username":"u2","password":"p2"},
            "reg.example.com:5000/team":{"username":"team","password":"t"},
            "*.corp.example":{"auth":"Y29ycDpj"},
            "helper.example":{"identitytoken":"x"}
        }}"#;
        let creds = Credentials::from_docker_config(json, "test").unwrap();
        let hub = creds.matching("docker.io", "library/busybox");
        assert_eq!(hub.len(), 1);
        assert_eq!(hub[0].username, "user");
        assert_eq!(hub[0].password, "pa:ss");
        let team = creds.matching("reg.example.com:5000", "team/app");
        assert_eq!(team[0].username, "team");
        assert_eq!(team[1].username, "u2");
        let other = creds.matching("reg.example.com:5000", "teamx/app");
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].username, "u2");
        assert!(creds.matching("reg.example.com", "team/app").is_empty());
        assert_eq!(creds.matching("a.corp.example", "x")[0].username, "corp");
        assert!(creds.matching("a.b.corp.example", "x").is_empty());
        assert!(creds.matching("helper.example", "x").is_empty());

        let legacy = br#"{"reg.example.com":{"auth":"dTpw","email":"x@y"}}"#;
        let creds = Credentials::from_docker_config(legacy, "legacy").unwrap();
        assert_eq!(creds.matching("reg.example.com", "a")[0].password, "p");

        let err = Credentials::from_docker_config(br#"{"auths":{"x":{"auth":"%%"}}}"#, "bad")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad") && err.contains("base64"), "{err}");
    }

    #[test]
    fn debug_redacts_password() {
        let c = Credential {
            username: "u".into(),
            password: "secret".into(),
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
