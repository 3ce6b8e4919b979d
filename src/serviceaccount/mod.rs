//! Service accounts: the implicit `default` account of every namespace, bound tokens signed by
//! the node's key (`<root-dir>/pki/sa.key`), their refresh in pod volumes at 80 % of their
//! lifetime (the kubelet's token manager), and their verification for the TLS API.
//!
//! A token is bound to its pod: the API accepts it only while a pod of that name and uid exists
//! on this node, so a deleted pod's token stops working at once, before it expires.

pub mod admission;
pub mod auth;
pub mod jwt;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info};

use self::jwt::{Claims, JwtError, KubernetesClaim, ObjRef, Signer};
use crate::store::Store;

/// The apiserver's default `--service-account-issuer` for a cluster named `cluster.local`.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A token is issued again after this share of its lifetime (the kubelet's 80 %).
const REFRESH_NUMERATOR: i64 = 8;
const REFRESH_DENOMINATOR: i64 = 10;
/// ... or when it is a day old, whatever its lifetime.
const REFRESH_MAX_AGE: i64 = 24 * 3600;
/// The least time between two volume refreshes the token refresher asks for.
const MIN_RESYNC_GAP: Duration = Duration::from_secs(2);
/// A due token whose refresh was asked for and did not happen (a finished pod's worker does not
/// set up its volumes again) is asked for again only after this long, so it cannot make the
/// refresher spin.
const ASK_AGAIN_SECONDS: i64 = 60;

/// Errors preparing the signing key or issuing a token.
#[derive(Debug, thiserror::Error)]
pub enum SaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("the cluster CA: {0}")]
    Ca(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Jwt(#[from] JwtError),
}

/// Issuer settings (`--service-account-issuer`, `--service-account-max-token-expiration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The `iss` of every token; also the API's audience.
    pub issuer: String,
    /// Tokens asked for longer are issued for this long (the apiserver's flag of the same name).
    pub max_expiration: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            issuer: DEFAULT_ISSUER.into(),
            max_expiration: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    pod_uid: String,
    service_account: String,
    audience: String,
    expiration_seconds: i64,
}

#[derive(Debug, Clone)]
struct Issued {
    token: String,
    iat: i64,
    exp: i64,
    /// When the refresher last asked for this token to be issued again.
    asked: Option<i64>,
}

impl Issued {
    /// When the kubelet would ask for a new one.
    fn refresh_at(&self) -> i64 {
        let ttl = self.exp - self.iat;
        (self.iat + ttl * REFRESH_NUMERATOR / REFRESH_DENOMINATOR).min(self.iat + REFRESH_MAX_AGE)
    }

    /// When the refresher should ask for a new one.
    fn wake_at(&self) -> i64 {
        match self.asked {
            Some(at) => at + ASK_AGAIN_SECONDS,
            None => self.refresh_at(),
        }
    }
}

/// The node's token issuer and verifier.
pub struct ServiceAccounts {
    signer: Signer,
    settings: Settings,
    node_name: String,
    ca_pem: String,
    cache: Mutex<HashMap<CacheKey, Issued>>,
    /// A token was issued: the refresher looks at its schedule again.
    issued: Notify,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SaError + '_ {
    move |source| SaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn now_seconds() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl ServiceAccounts {
    /// Loads the signing key and the cluster CA from `<root-dir>/pki/`, making them at first
    /// start (the key 0600, the directory 0700).
    pub fn load_or_create(
        root_dir: &Path,
        node_name: &str,
        settings: Settings,
    ) -> Result<ServiceAccounts, SaError> {
        let dir = root_dir.join("pki");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(&dir))?;
        let (ca_pem, _) = crate::pki::ca(&dir)?;
        let key_path = dir.join("sa.key");
        let der = match std::fs::read_to_string(&key_path) {
            Ok(pem) => {
                std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io_err(&key_path))?;
                pem_decode(&pem).ok_or_else(|| SaError::Invalid {
                    path: key_path.clone(),
                    message: "not a PEM PRIVATE KEY".into(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let der = Signer::generate_pkcs8()?;
                write_private(&key_path, pem_encode(&der).as_bytes())?;
                info!(path = %key_path.display(), "made the service account signing key");
                der
            }
            Err(e) => return Err(io_err(&key_path)(e)),
        };
        let signer = Signer::from_pkcs8(&der).map_err(|e| SaError::Invalid {
            path: key_path.clone(),
            message: e.to_string(),
        })?;
        Ok(ServiceAccounts::new(signer, settings, node_name, ca_pem))
    }

    /// An issuer over a key already loaded (tests).
    pub fn new(signer: Signer, settings: Settings, node_name: &str, ca_pem: String) -> Self {
        ServiceAccounts {
            signer,
            settings,
            node_name: node_name.into(),
            ca_pem,
            cache: Mutex::new(HashMap::new()),
            issued: Notify::new(),
        }
    }

    /// The cluster CA (PEM): `ca.crt` of the token volume and of `kube-root-ca.crt`.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The audiences the API accepts (the apiserver's `--api-audiences` default: the issuer).
    pub fn api_audiences(&self) -> Vec<String> {
        vec![self.settings.issuer.clone()]
    }

    /// The token for a pod's `serviceAccountToken` source: the one issued before while it is
    /// younger than 80 % of its lifetime, else a new one.
    pub fn token(
        &self,
        pod: &Pod,
        audience: Option<&str>,
        expiration_seconds: i64,
    ) -> Result<String, SaError> {
        self.token_at(pod, audience, expiration_seconds, now_seconds())
    }

    fn token_at(
        &self,
        pod: &Pod,
        audience: Option<&str>,
        expiration_seconds: i64,
        now: i64,
    ) -> Result<String, SaError> {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| admission::DEFAULT_SERVICE_ACCOUNT.into());
        let key = CacheKey {
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
            service_account: sa.clone(),
            audience: audience.unwrap_or_default().to_string(),
            expiration_seconds,
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = cache.get(&key)
            && now < t.refresh_at()
        {
            return Ok(t.token.clone());
        }
        let mut lifetime = expiration_seconds;
        if let Some(max) = self.settings.max_expiration {
            lifetime = lifetime.min(max.as_secs() as i64).max(1);
        }
        let aud = match audience.filter(|a| !a.is_empty()) {
            Some(a) => vec![a.to_string()],
            None => self.api_audiences(),
        };
        let claims = Claims {
            aud,
            exp: now + lifetime,
            iat: now,
            iss: self.settings.issuer.clone(),
            jti: uuid_from(&random_bytes()),
            kubernetes: KubernetesClaim {
                namespace: ns.clone(),
                node: Some(ObjRef {
                    name: self.node_name.clone(),
                    uid: self.stable_uid("node", "", &self.node_name),
                }),
                pod: Some(ObjRef {
                    name: pod.metadata.name.clone().unwrap_or_default(),
                    uid: key.pod_uid.clone(),
                }),
                serviceaccount: ObjRef {
                    name: sa.clone(),
                    uid: self.service_account_uid(&ns, &sa),
                },
            },
            nbf: now,
            sub: jwt::subject(&ns, &sa),
        };
        let token = self.signer.sign(&claims)?;
        debug!(namespace = %ns, pod = ?pod.metadata.name, service_account = %sa, lifetime, "issued a service account token");
        cache.insert(
            key,
            Issued {
                token: token.clone(),
                iat: claims.iat,
                exp: claims.exp,
                asked: None,
            },
        );
        drop(cache);
        self.issued.notify_one();
        Ok(token)
    }

    /// The uid of a namespace's implicit service account: stable for this node's key.
    pub fn service_account_uid(&self, namespace: &str, name: &str) -> String {
        self.stable_uid("serviceaccount", namespace, name)
    }

    fn stable_uid(&self, kind: &str, namespace: &str, name: &str) -> String {
        let d = Sha256::digest(format!("{}/{kind}/{namespace}/{name}", self.signer.kid()));
        uuid_from(&d[..16])
    }

    /// The user a bearer token is (`system:serviceaccount:<ns>:<name>`), if it is a token this
    /// node signed, valid now, for the API's audience, of a pod that still exists.
    pub fn authenticate(&self, token: &str, store: &Store) -> Result<String, String> {
        self.authenticate_at(token, store, now_seconds())
    }

    fn authenticate_at(&self, token: &str, store: &Store, now: i64) -> Result<String, String> {
        let claims = self.signer.verify(token).map_err(|e| e.to_string())?;
        jwt::check_claims(&claims, &self.settings.issuer, &self.api_audiences(), now)
            .map_err(|e| e.to_string())?;
        let k = &claims.kubernetes;
        let sa = &k.serviceaccount;
        if claims.sub != jwt::subject(&k.namespace, &sa.name)
            || sa.uid != self.service_account_uid(&k.namespace, &sa.name)
        {
            return Err("the subject does not match the service account claim".into());
        }
        let Some(pod_ref) = &k.pod else {
            return Err("not bound to a pod".into());
        };
        let pod = store
            .get_pod(&k.namespace, &pod_ref.name)
            .filter(|p| p.metadata.uid.as_deref() == Some(pod_ref.uid.as_str()))
            .ok_or_else(|| {
                format!(
                    "pod {}/{} (uid {}) does not exist any more",
                    k.namespace, pod_ref.name, pod_ref.uid
                )
            })?;
        let pod_sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref())
            .unwrap_or(admission::DEFAULT_SERVICE_ACCOUNT);
        if pod_sa != sa.name {
            return Err(format!(
                "pod {}/{} does not run as service account {}",
                k.namespace, pod_ref.name, sa.name
            ));
        }
        Ok(claims.sub)
    }

    /// Forgets the tokens of pods not in `live` (pod uids).
    fn forget_gone(&self, live: &std::collections::HashSet<String>) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|k, _| live.contains(&k.pod_uid));
    }

    /// The earliest time (Unix seconds) the refresher should ask for a refresh.
    fn next_refresh(&self) -> Option<i64> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.values().map(Issued::wake_at).min()
    }

    /// Marks the tokens due at `now` as asked for; whether there was one.
    fn take_due(&self, now: i64) -> bool {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let mut any = false;
        for t in cache.values_mut().filter(|t| t.wake_at() <= now) {
            t.asked = Some(now);
            any = true;
        }
        any
    }
}

/// Asks every pod to set up its volumes again (which issues the tokens that are due) whenever a
/// token reaches 80 % of its lifetime; runs until `shutdown`.
pub async fn refresh_tokens(
    sa: Arc<ServiceAccounts>,
    store: Arc<Store>,
    resync: mpsc::UnboundedSender<()>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut last_resync: Option<tokio::time::Instant> = None;
    loop {
        let live = store
            .list_pods(None)
            .into_iter()
            .filter_map(|p| p.metadata.uid)
            .collect();
        sa.forget_gone(&live);
        let wait = match sa.next_refresh() {
            Some(at) => Duration::from_secs((at - now_seconds()).max(0) as u64),
            // Nothing issued yet: wait for a token (or look at the pods again now and then).
            None => Duration::from_secs(60),
        };
        let mut deadline = tokio::time::Instant::now() + wait.min(Duration::from_secs(60));
        if let Some(last) = last_resync {
            deadline = deadline.max(last + MIN_RESYNC_GAP);
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = sa.issued.notified() => continue,
            _ = tokio::time::sleep_until(deadline) => {}
        }
        if sa.take_due(now_seconds()) {
            debug!("service account tokens due: refreshing pod volumes");
            last_resync = Some(tokio::time::Instant::now());
            if resync.send(()).is_err() {
                return;
            }
        }
    }
}

fn random_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    // The jti only has to be unique; ring's generator reads the kernel's.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b
}

/// A version-4 style UUID string from 16 bytes.
fn uuid_from(b: &[u8]) -> String {
    let mut b: [u8; 16] = b[..16].try_into().unwrap_or([0; 16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn pem_encode(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

fn pem_decode(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()
}

/// Writes a 0600 file atomically and durably.
fn write_private(path: &Path, data: &[u8]) -> Result<(), SaError> {
    let sync = hostkit::atomic::Sync::Durable;
    hostkit::atomic::write(path, data, 0o600, sync).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(max: Option<Duration>) -> ServiceAccounts {
        let signer = Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap();
        ServiceAccounts::new(
            signer,
            Settings {
                max_expiration: max,
                ..Settings::default()
            },
            "node-a",
            "CA".into(),
        )
    }

    fn pod(name: &str, uid: &str) -> Pod {
        serde_yaml_ng::from_str(&format!(
            "metadata: {{name: {name}, namespace: shop, uid: {uid}}}\nspec:\n  serviceAccountName: default\n  containers: [{{name: a, image: i}}]\n"
        ))
        .unwrap()
    }

    fn store_with(pods: &[Pod]) -> Store {
        let store = Store::new("node-a");
        for p in pods {
            store.put_pod(p.clone(), true);
        }
        store
    }

    #[test]
    fn tokens_are_reused_until_80_percent_of_their_lifetime() {
        let sa = issuer(None);
        let p = pod("web", "u1");
        let first = sa.token_at(&p, None, 1000, 10_000).unwrap();
        assert_eq!(sa.token_at(&p, None, 1000, 10_799).unwrap(), first);
        assert_eq!(sa.next_refresh(), Some(10_800));
        let second = sa.token_at(&p, None, 1000, 10_800).unwrap();
        assert_ne!(second, first);
        assert_eq!(sa.next_refresh(), Some(11_600));
        // Another audience is another token.
        let other = sa.token_at(&p, Some("vault"), 1000, 10_800).unwrap();
        assert_ne!(other, second);
        let claims = sa.signer.verify(&other).unwrap();
        assert_eq!(claims.aud, vec!["vault".to_string()]);
        // A refresh asked for that does not happen (a finished pod) is asked again a minute on.
        sa.token_at(&p, None, 1000, 20_000).unwrap();
        let due = sa.next_refresh().unwrap();
        assert!(sa.take_due(due));
        assert!(!sa.take_due(due + 1));
        assert!(sa.next_refresh().unwrap() > due);
        sa.forget_gone(&Default::default());
        assert_eq!(sa.next_refresh(), None);
    }

    #[test]
    fn day_old_tokens_are_refreshed_whatever_their_lifetime() {
        let sa = issuer(None);
        let p = pod("web", "u1");
        sa.token_at(&p, None, 7 * 24 * 3600, 0).unwrap();
        assert_eq!(sa.next_refresh(), Some(24 * 3600));
    }

    #[test]
    fn max_expiration_caps_the_lifetime() {
        let sa = issuer(Some(Duration::from_secs(10)));
        let t = sa.token_at(&pod("web", "u1"), None, 3607, 100).unwrap();
        let c = sa.signer.verify(&t).unwrap();
        assert_eq!((c.iat, c.nbf, c.exp), (100, 100, 110));
        assert_eq!(sa.next_refresh(), Some(108));
    }

    #[test]
    fn claims_follow_the_apiserver() {
        let sa = issuer(None);
        let t = sa.token_at(&pod("web", "u1"), None, 3607, 100).unwrap();
        let c = sa.signer.verify(&t).unwrap();
        assert_eq!(c.iss, DEFAULT_ISSUER);
        assert_eq!(c.aud, vec![DEFAULT_ISSUER.to_string()]);
        assert_eq!(c.sub, "system:serviceaccount:shop:default");
        assert_eq!(c.exp, 100 + 3607);
        let k = &c.kubernetes;
        assert_eq!(k.namespace, "shop");
        assert_eq!(
            k.pod,
            Some(ObjRef {
                name: "web".into(),
                uid: "u1".into()
            })
        );
        assert_eq!(k.serviceaccount.name, "default");
        assert_eq!(
            k.serviceaccount.uid,
            sa.service_account_uid("shop", "default")
        );
        assert_eq!(k.node.as_ref().unwrap().name, "node-a");
    }

    #[test]
    fn the_api_accepts_a_live_pods_token_only() {
        let sa = issuer(None);
        let now = now_seconds();
        let web = pod("web", "u1");
        let store = store_with(std::slice::from_ref(&web));
        let t = sa.token_at(&web, None, 3607, now).unwrap();
        assert_eq!(
            sa.authenticate_at(&t, &store, now).unwrap(),
            "system:serviceaccount:shop:default"
        );
        // Expired, not yet valid.
        assert!(sa.authenticate_at(&t, &store, now + 3607).is_err());
        assert!(sa.authenticate_at(&t, &store, now - 1).is_err());
        // Another audience is not for the API.
        let vault = sa.token_at(&web, Some("vault"), 3607, now).unwrap();
        assert!(sa.authenticate_at(&vault, &store, now).is_err());
        // The pod is gone, or replaced by one of the same name.
        let empty = store_with(&[]);
        let e = sa.authenticate_at(&t, &empty, now).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        let replaced = store_with(&[pod("web", "u2")]);
        assert!(sa.authenticate_at(&t, &replaced, now).is_err());
        // Another node's key.
        let other = issuer(None).token_at(&web, None, 3607, now).unwrap();
        assert!(sa.authenticate_at(&other, &store, now).is_err());
    }

    #[test]
    fn key_is_made_once_with_a_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let a = ServiceAccounts::load_or_create(dir.path(), "n", Settings::default()).unwrap();
        let key = dir.path().join("pki/sa.key");
        let meta = std::fs::metadata(&key).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let b = ServiceAccounts::load_or_create(dir.path(), "n", Settings::default()).unwrap();
        assert_eq!(a.signer.kid(), b.signer.kid());
        assert!(a.ca_pem().contains("BEGIN CERTIFICATE"));
        let t = a.token(&pod("web", "u1"), None, 600).unwrap();
        assert!(
            b.signer.verify(&t).is_ok(),
            "a restarted node accepts its tokens"
        );
    }
}
