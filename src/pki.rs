//! The TLS API's keys and credentials under `<root-dir>/pki/`: a CA made at first start, a
//! serving certificate it signs (issued again at every start, so new node addresses are in
//! it), the bearer tokens and an admin kubeconfig that `skiff kubeconfig` prints.
//!
//! Layout (the directory 0700, keys, tokens and the kubeconfig 0600):
//! `ca.crt`, `ca.key`, `apiserver.crt`, `apiserver.key`, `tokens`, `admin.kubeconfig`.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};

/// The CA's subject; the same each time so that a reloaded CA key signs as the same issuer.
const CA_COMMON_NAME: &str = "skiff-ca";
/// Years the CA is valid (kubeadm's CA: ten).
const CA_YEARS: i16 = 10;
/// Years a serving certificate is valid; it is issued again at every start anyway.
const SERVING_YEARS: i16 = 1;
/// The kubeconfig's user name for the admin token.
const ADMIN_USER: &str = "admin";

/// Errors preparing the pki directory.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("making a certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("TLS settings: {0}")]
    Tls(#[from] rustls::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One user the token file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUser {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

/// The bearer tokens the TLS API accepts, in the apiserver's static token file format
/// (`token,user,uid,"group1,group2"`). Only their SHA-256 digests are kept in memory.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], TokenUser)>,
}

impl Tokens {
    /// Parses a token file's text; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.splitn(4, ',');
            let token = fields.next().unwrap_or_default().trim();
            let name = fields.next().unwrap_or_default().trim();
            let uid = fields.next().unwrap_or_default().trim();
            if token.is_empty() || name.is_empty() || uid.is_empty() {
                return Err(format!(
                    "line {}: expected token,user,uid[,\"groups\"]",
                    i + 1
                ));
            }
            let groups = fields
                .next()
                .map(|g| {
                    g.trim()
                        .trim_matches('"')
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            entries.push((
                digest(token),
                TokenUser {
                    name: name.into(),
                    uid: uid.into(),
                    groups,
                },
            ));
        }
        Ok(Tokens { entries })
    }

    /// The user a bearer token belongs to. Compares digests in constant time so the answer's
    /// timing says nothing about how much of a token was right.
    pub fn authenticate(&self, token: &str) -> Option<&TokenUser> {
        let d = digest(token);
        let mut found = None;
        for (known, user) in &self.entries {
            let diff = known
                .iter()
                .zip(d.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 && found.is_none() {
                found = Some(user);
            }
        }
        found
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no token (then nobody gets in over TCP).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What the TLS listener needs.
pub struct Pki {
    /// The TLS server settings with the serving certificate.
    pub tls: Arc<rustls::ServerConfig>,
    /// The accepted bearer tokens.
    pub tokens: Tokens,
}

/// Where the admin kubeconfig is kept.
pub fn kubeconfig_path(root_dir: &Path) -> PathBuf {
    root_dir.join("pki").join("admin.kubeconfig")
}

/// Prepares `<root-dir>/pki/`: makes what is missing (CA, admin token), issues a serving
/// certificate for `sans` and writes the admin kubeconfig for `server`.
pub fn ensure(
    root_dir: &Path,
    node_name: &str,
    sans: &[String],
    server: &str,
) -> Result<Pki, PkiError> {
    let dir = root_dir.join("pki");
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    // Keys live here: root only, also when the directory was made by an older skiffd.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(&dir))?;

    let (ca_cert_pem, ca_key) = ca(&dir)?;
    let ca_params = ca_params(jiff::Timestamp::now());
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans.to_vec())?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("skiff-apiserver-{node_name}"));
    set_validity(&mut params, jiff::Timestamp::now(), SERVING_YEARS);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let server_cert = params.signed_by(&server_key, &issuer)?;
    write_private(
        &dir.join("apiserver.key"),
        server_key.serialize_pem().as_bytes(),
    )?;
    write_file(
        &dir.join("apiserver.crt"),
        server_cert.pem().as_bytes(),
        0o644,
    )?;

    let tokens_path = dir.join("tokens");
    if !tokens_path.exists() {
        let token = random_token().map_err(io_err(&tokens_path))?;
        let line = format!("{token},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n");
        write_private(&tokens_path, line.as_bytes())?;
    }
    std::fs::set_permissions(&tokens_path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(&tokens_path))?;
    let tokens_text = std::fs::read_to_string(&tokens_path).map_err(io_err(&tokens_path))?;
    let tokens = Tokens::parse(&tokens_text).map_err(|message| PkiError::Invalid {
        path: tokens_path.clone(),
        message,
    })?;
    let admin_token = first_token(&tokens_text);

    if let Some(token) = admin_token {
        let text = kubeconfig(node_name, server, &ca_cert_pem, &token);
        write_private(&kubeconfig_path(root_dir), text.as_bytes())?;
    }

    let chain = vec![
        server_cert.der().clone(),
        rustls_pki_types::CertificateDer::from(pem_der(&ca_cert_pem, &dir.join("ca.crt"))?),
    ];
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // HTTP/1.1 only: exec and logs streams are served as HTTP/1.1 upgrades and chunked bodies.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Pki {
        tls: Arc::new(tls),
        tokens,
    })
}

/// Loads the CA or makes it at first start.
pub(crate) fn ca(dir: &Path) -> Result<(String, KeyPair), PkiError> {
    let cert_path = dir.join("ca.crt");
    let key_path = dir.join("ca.key");
    if cert_path.exists() && key_path.exists() {
        let key_pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Invalid {
            path: key_path.clone(),
            message: e.to_string(),
        })?;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(&key_path))?;
        let cert = std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        return Ok((cert, key));
    }
    let key = KeyPair::generate()?;
    let cert = ca_params(jiff::Timestamp::now()).self_signed(&key)?;
    // The key first: a crash in between leaves no certificate without its key.
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    tracing::info!(dir = %dir.display(), "made the API's certificate authority");
    Ok((cert.pem(), key))
}

/// The CA's parameters. Issuing only needs the subject and key usages, which stay the same.
fn ca_params(now: jiff::Timestamp) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, now, CA_YEARS);
    params
}

/// From a day ago (clocks of clients drift) to `years` ahead.
fn set_validity(params: &mut CertificateParams, now: jiff::Timestamp, years: i16) {
    let day = |t: jiff::Timestamp, add_years: i16| {
        let d = t.to_zoned(jiff::tz::TimeZone::UTC).date();
        // Feb 29 plus whole years: use the 28th.
        rcgen::date_time_ymd(
            i32::from(d.year() + add_years),
            d.month() as u8,
            (d.day() as u8).min(28),
        )
    };
    let yesterday = now - jiff::SignedDuration::from_hours(24);
    params.not_before = day(yesterday, 0);
    params.not_after = day(now, years);
}

/// 32 random bytes from the kernel, hex: the admin token.
fn random_token() -> std::io::Result<String> {
    let mut buf = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn first_token(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .and_then(|l| l.split(',').next())
        .map(|t| t.trim().to_string())
}

/// The DER inside a one-certificate PEM.
fn pem_der(pem: &str, path: &Path) -> Result<Vec<u8>, PkiError> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|e| PkiError::Invalid {
            path: path.to_path_buf(),
            message: format!("not a PEM certificate: {e}"),
        })
}

/// A kubeconfig for `server` with the CA inline and the admin token; the context is the
/// node's name.
pub fn kubeconfig(node_name: &str, server: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": node_name, "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": ADMIN_USER, "user": {"token": token}}],
        "contexts": [{"name": node_name, "context": {"cluster": node_name, "user": ADMIN_USER}}],
        "current-context": node_name,
        "preferences": {},
    });
    serde_yaml_ng::to_string(&doc).unwrap_or_default()
}

/// The URL clients use for a listen address: an unspecified address means loopback works.
pub fn server_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("https://{}", SocketAddr::new(ip, addr.port()))
}

/// Subject alternative names for the serving certificate: the node name, `localhost`,
/// loopback, the listen address and every address of the node's interfaces.
pub fn sans(node_name: &str, listen: SocketAddr, extra: Option<&str>) -> Vec<String> {
    let mut out = vec![
        node_name.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !listen.ip().is_unspecified() {
        out.push(listen.ip().to_string());
    }
    out.extend(extra.map(str::to_string));
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(sa) = a.address else { continue };
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                // Link-local addresses need a zone and are no use in a certificate.
                if (v6.ip().segments()[0] & 0xffc0) == 0xfe80 {
                    continue;
                }
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            out.push(ip.to_string());
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|s| seen.insert(s.clone()));
    out
}

/// Writes a 0600 file atomically.
fn write_private(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    write_file(path, data, 0o600)
}

/// Writes a file atomically and durably with `mode`, so a crash leaves the old content or the
/// new one and a key is never readable by others.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let sync = hostkit::atomic::Sync::Durable;
    hostkit::atomic::write(path, data, mode, sync).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_parses_and_authenticates() {
        let t = Tokens::parse("# comment\nabc,admin,admin,\"system:masters,x\"\n\ndef,bob,42\n")
            .unwrap();
        assert_eq!(t.len(), 2);
        let u = t.authenticate("abc").unwrap();
        assert_eq!(u.name, "admin");
        assert_eq!(u.groups, vec!["system:masters", "x"]);
        assert_eq!(t.authenticate("def").unwrap().uid, "42");
        assert!(t.authenticate("ab").is_none());
        assert!(t.authenticate("").is_none());
        assert!(Tokens::parse("only-a-token\n").is_err());
    }

    #[test]
    fn pki_is_made_once_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let sans = sans("node-a", "127.0.0.1:6443".parse().unwrap(), None);
        let server = "https://127.0.0.1:6443";
        ensure(dir.path(), "node-a", &sans, server).unwrap();
        let pki = dir.path().join("pki");
        let mode = |p: &str| std::fs::metadata(pki.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            std::fs::metadata(&pki).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for f in ["ca.key", "apiserver.key", "tokens", "admin.kubeconfig"] {
            assert_eq!(mode(f), 0o600, "{f}");
        }
        let ca = std::fs::read(pki.join("ca.crt")).unwrap();
        let tokens = std::fs::read(pki.join("tokens")).unwrap();
        // A second start keeps the CA and the token and issues a new serving certificate.
        let again = ensure(dir.path(), "node-a", &sans, server).unwrap();
        assert_eq!(std::fs::read(pki.join("ca.crt")).unwrap(), ca);
        assert_eq!(std::fs::read(pki.join("tokens")).unwrap(), tokens);
        let token = first_token(&String::from_utf8(tokens).unwrap()).unwrap();
        assert_eq!(token.len(), 64);
        assert!(again.tokens.authenticate(&token).is_some());
        let kc = std::fs::read_to_string(pki.join("admin.kubeconfig")).unwrap();
        assert!(
            kc.contains(&token) && kc.contains(server) && kc.contains("current-context: node-a"),
            "{kc}"
        );
    }

    #[test]
    fn server_url_of_an_unspecified_address_is_loopback() {
        assert_eq!(
            server_url("0.0.0.0:6443".parse().unwrap()),
            "https://127.0.0.1:6443"
        );
        assert_eq!(
            server_url("10.0.0.1:443".parse().unwrap()),
            "https://10.0.0.1:443"
        );
    }
}
