//! Image references: parsing and normalisation.
//!
//! Follows the grammar of `distribution/reference` as docker's `ParseNormalizedNamed` applies it:
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path-component ( "/" path-component )*
//! domain     := host [ ":" port ]          (only if it has a '.' or ':', or is "localhost")
//! path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest     := algorithm ":" hex          (sha256: exactly 64 lowercase hex)
//! ```
//!
//! A name without a domain lives on `docker.io`, and a single-component docker.io name is an
//! official image under `library/`; a reference with neither tag nor digest gets `:latest`.

use std::fmt;

/// The registry that short names refer to.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// Old spelling of [`DEFAULT_DOMAIN`], rewritten to it.
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// Namespace of docker.io's single-component ("official") images.
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// Tag used when a reference names none.
pub const DEFAULT_TAG: &str = "latest";
const MAX_TAG_LEN: usize = 128;
const MAX_NAME_LEN: usize = 255;

/// Why a string is not a valid image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The reference is empty (or only whitespace).
    #[error("empty image reference")]
    Empty,
    /// The repository path has upper-case letters (only the registry host may).
    #[error("invalid reference {reference:?}: repository name must be lowercase")]
    Uppercase {
        /// The reference as given.
        reference: String,
    },
    /// The name does not match the grammar.
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidName {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The tag has characters outside `[A-Za-z0-9_.-]` or starts with `.` or `-`.
    #[error(
        "invalid reference {reference:?}: invalid tag {tag:?} (only [A-Za-z0-9_.-], not starting with '.' or '-')"
    )]
    InvalidTag {
        /// The reference as given.
        reference: String,
        /// The offending tag.
        tag: String,
    },
    /// The tag is longer than 128 characters.
    #[error("invalid reference {reference:?}: tag is {len} characters long, at most 128 allowed")]
    TagTooLong {
        /// The reference as given.
        reference: String,
        /// Length of the tag.
        len: usize,
    },
    /// The digest is malformed.
    #[error("invalid reference {reference:?}: invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        /// The reference as given.
        reference: String,
        /// The offending digest.
        digest: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Registry plus repository is longer than 255 characters.
    #[error("invalid reference {reference:?}: name is {len} characters long, at most 255 allowed")]
    NameTooLong {
        /// The reference as given.
        reference: String,
        /// Length of the name.
        len: usize,
    },
    /// A bare 64-character hex string: that is an image id, never a repository name.
    #[error(
        "invalid reference {reference:?}: a 64-character hex string is an image id, not a repository name"
    )]
    LooksLikeId {
        /// The reference as given.
        reference: String,
    },
}

/// A parsed, normalised reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host with optional port, e.g. `docker.io` or `localhost:5000`.
    pub domain: String,
    /// Repository path inside the registry, e.g. `library/busybox`.
    pub path: String,
    /// Tag, if given.
    pub tag: Option<String>,
    /// Digest (`algorithm:hex`), if given.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `s` and fills in the defaults for domain and official-image namespace (but not the
    /// default tag: see [`Reference::with_default_tag`]).
    pub fn parse_normalized(s: &str) -> Result<Reference, ReferenceError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.len() == 64 && s.bytes().all(is_lower_hex) {
            return Err(ReferenceError::LooksLikeId {
                reference: s.to_owned(),
            });
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                check_digest(s, d)?;
                (n, Some(d.to_owned()))
            }
            None => (s, None),
        };
        // A ':' after the last '/' starts the tag; an earlier one is the registry port.
        let slash = name_tag.rfind('/');
        let (name, tag) = match name_tag.rfind(':') {
            Some(colon) if slash.is_none_or(|sl| colon > sl) => {
                (&name_tag[..colon], Some(&name_tag[colon + 1..]))
            }
            _ => (name_tag, None),
        };
        if let Some(tag) = tag {
            check_tag(s, tag)?;
        }
        if name.is_empty() {
            return Err(invalid(
                s,
                "repository name must have at least one component",
            ));
        }
        let (domain, remainder) = split_domain(name);
        if remainder.to_lowercase() != remainder {
            return Err(ReferenceError::Uppercase {
                reference: s.to_owned(),
            });
        }
        check_domain(s, &domain)?;
        check_path(s, &remainder)?;
        let len = domain.len() + 1 + remainder.len();
        if len > MAX_NAME_LEN {
            return Err(ReferenceError::NameTooLong {
                reference: s.to_owned(),
                len,
            });
        }
        Ok(Reference {
            domain,
            path: remainder,
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// Adds the `latest` tag when the reference has neither tag nor digest.
    pub fn with_default_tag(mut self) -> Reference {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_owned());
        }
        self
    }

    /// `domain/path`, without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Normalises a reference to its full form: `busybox` becomes
/// `docker.io/library/busybox:latest`, `localhost:5000/a/b` becomes `localhost:5000/a/b:latest`;
/// digests are kept (and then no default tag is added).
pub fn normalize(s: &str) -> Result<String, ReferenceError> {
    Ok(Reference::parse_normalized(s)?
        .with_default_tag()
        .to_string())
}

fn invalid(reference: &str, reason: &str) -> ReferenceError {
    ReferenceError::InvalidName {
        reference: reference.to_owned(),
        reason: reason.to_owned(),
    }
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// Docker's rule: the first component is a registry only if it looks like a host.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ => (DEFAULT_DOMAIN.to_owned(), name.to_owned()),
    };
    if domain == LEGACY_DEFAULT_DOMAIN {
        domain = DEFAULT_DOMAIN.to_owned();
    }
    if domain == DEFAULT_DOMAIN && !remainder.contains('/') {
        remainder = format!("{OFFICIAL_REPO_PREFIX}{remainder}");
    }
    (domain, remainder)
}

fn check_tag(reference: &str, tag: &str) -> Result<(), ReferenceError> {
    if tag.len() > MAX_TAG_LEN {
        return Err(ReferenceError::TagTooLong {
            reference: reference.to_owned(),
            len: tag.len(),
        });
    }
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    let ok = chars.next().is_some_and(word) && chars.all(|c| word(c) || c == '.' || c == '-');
    if !ok {
        return Err(ReferenceError::InvalidTag {
            reference: reference.to_owned(),
            tag: tag.to_owned(),
        });
    }
    Ok(())
}

fn check_digest(reference: &str, digest: &str) -> Result<(), ReferenceError> {
    let err = |reason| ReferenceError::InvalidDigest {
        reference: reference.to_owned(),
        digest: digest.to_owned(),
        reason,
    };
    let (algorithm, hex) = digest.split_once(':').ok_or_else(|| err("missing ':'"))?;
    let algorithm_ok = !algorithm.is_empty()
        && algorithm.split(['+', '.', '_', '-']).all(|c| {
            let mut cs = c.chars();
            cs.next().is_some_and(|c| c.is_ascii_alphabetic())
                && cs.all(|c| c.is_ascii_alphanumeric())
        });
    if !algorithm_ok {
        return Err(err("invalid algorithm"));
    }
    match algorithm {
        "sha256" if hex.len() != 64 => Err(err("sha256 needs 64 hex characters")),
        "sha512" if hex.len() != 128 => Err(err("sha512 needs 128 hex characters")),
        "sha256" | "sha512" if !hex.bytes().all(is_lower_hex) => {
            Err(err("only lowercase hex characters allowed"))
        }
        _ if hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Err(err("needs at least 32 hex characters"))
        }
        _ => Ok(()),
    }
}

fn check_domain(reference: &str, domain: &str) -> Result<(), ReferenceError> {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        // IPv6 literal: [addr]:port
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| invalid(reference, "unterminated IPv6 address"))?;
        if addr.is_empty()
            || !addr
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(invalid(reference, "invalid IPv6 address in registry"));
        }
        match after {
            "" => return Ok(()),
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err(invalid(reference, "invalid registry")),
            },
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(domain), None),
        }
    };
    if let Some(host) = host {
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
                && !c.starts_with('-')
                && !c.ends_with('-')
        };
        if !host.split('.').all(component_ok) {
            return Err(invalid(reference, "invalid registry host name"));
        }
    }
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid(reference, "invalid registry port"));
    }
    Ok(())
}

fn check_path(reference: &str, path: &str) -> Result<(), ReferenceError> {
    for component in path.split('/') {
        if component.is_empty() {
            return Err(invalid(
                reference,
                "empty path component in repository name",
            ));
        }
        if !path_component_ok(component) {
            return Err(invalid(
                reference,
                "repository path components are [a-z0-9] separated by '.', '_', '__' or '-'",
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*`
fn path_component_ok(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    if !bytes.first().copied().is_some_and(alnum) || !bytes.last().copied().is_some_and(alnum) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let cases = [
            ("busybox", "docker.io/library/busybox:latest".to_owned()),
            ("busybox:1.36", "docker.io/library/busybox:1.36".to_owned()),
            (
                "library/busybox",
                "docker.io/library/busybox:latest".to_owned(),
            ),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest".to_owned(),
            ),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest".to_owned(),
            ),
            ("user/app:v1", "docker.io/user/app:v1".to_owned()),
            ("localhost/app", "localhost/app:latest".to_owned()),
            ("localhost:5000/a/b", "localhost:5000/a/b:latest".to_owned()),
            (
                "skiff.test/busybox:latest",
                "skiff.test/busybox:latest".to_owned(),
            ),
            (
                "quay.io/a/b-c__d.e---f:T_a.g-1",
                "quay.io/a/b-c__d.e---f:T_a.g-1".to_owned(),
            ),
            (
                "Registry.Example.com/x",
                "Registry.Example.com/x:latest".to_owned(),
            ),
            ("[::1]:5000/x", "[::1]:5000/x:latest".to_owned()),
            (
                &format!("busybox@{digest}"),
                format!("docker.io/library/busybox@{digest}"),
            ),
            (
                &format!("busybox:1@{digest}"),
                format!("docker.io/library/busybox:1@{digest}"),
            ),
            (" busybox ", "docker.io/library/busybox:latest".to_owned()),
        ];
        for (input, want) in cases {
            assert_eq!(
                normalize(input).as_deref(),
                Ok(want.as_str()),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn rejects_invalid() {
        use ReferenceError as E;
        let long_tag = format!("busybox:{}", "a".repeat(129));
        let long_name = format!("x.io/{}", "a".repeat(260));
        let id = "b".repeat(64);
        let short_digest = "busybox@sha256:abcd".to_owned();
        let upper_digest = format!("busybox@sha256:{}", "A".repeat(64));
        type Check = fn(&E) -> bool;
        let cases: Vec<(&str, Check)> = vec![
            ("", |e| matches!(e, E::Empty)),
            ("   ", |e| matches!(e, E::Empty)),
            ("BusyBox", |e| matches!(e, E::Uppercase { .. })),
            ("docker.io/Library/busybox", |e| {
                matches!(e, E::Uppercase { .. })
            }),
            ("busybox:-bad", |e| matches!(e, E::InvalidTag { .. })),
            ("busybox:a/b", |e| matches!(e, E::InvalidName { .. })),
            ("busybox:t@g", |e| matches!(e, E::InvalidDigest { .. })),
            ("busybox:", |e| matches!(e, E::InvalidTag { .. })),
            (&long_tag, |e| matches!(e, E::TagTooLong { len: 129, .. })),
            (&long_name, |e| matches!(e, E::NameTooLong { .. })),
            (&id, |e| matches!(e, E::LooksLikeId { .. })),
            (&short_digest, |e| matches!(e, E::InvalidDigest { .. })),
            (&upper_digest, |e| matches!(e, E::InvalidDigest { .. })),
            ("busybox@md5", |e| matches!(e, E::InvalidDigest { .. })),
            (":latest", |e| matches!(e, E::InvalidName { .. })),
            ("a//b", |e| matches!(e, E::InvalidName { .. })),
            ("a/b/", |e| matches!(e, E::InvalidName { .. })),
            ("-a", |e| matches!(e, E::InvalidName { .. })),
            ("a..b", |e| matches!(e, E::InvalidName { .. })),
            ("a_-b", |e| matches!(e, E::InvalidName { .. })),
            ("a___b", |e| matches!(e, E::InvalidName { .. })),
            ("bad_host.com:port/x", |e| {
                matches!(e, E::InvalidName { .. })
            }),
            ("host.com:50a0/x", |e| matches!(e, E::InvalidName { .. })),
        ];
        for (input, check) in cases {
            let err = normalize(input).expect_err(input);
            assert!(check(&err), "input {input:?}: unexpected {err:?}");
        }
    }

    #[test]
    fn error_messages_name_the_problem() {
        let msg = normalize("BusyBox").unwrap_err().to_string();
        assert!(msg.contains("lowercase"), "{msg}");
        let msg = normalize(&format!("b:{}", "x".repeat(200)))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("200") && msg.contains("128"), "{msg}");
    }

    #[test]
    fn parts() {
        let r = Reference::parse_normalized("localhost:5000/a/b:v2").unwrap();
        assert_eq!(r.domain, "localhost:5000");
        assert_eq!(r.path, "a/b");
        assert_eq!(r.tag.as_deref(), Some("v2"));
        assert_eq!(r.repository(), "localhost:5000/a/b");
    }
}
