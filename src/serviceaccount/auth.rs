//! Who a bearer token on the TLS API is, and what they may do: the static tokens of
//! `<root-dir>/pki/tokens` (full access) and service account tokens (read-only, like the
//! `view` role without `pods/exec`).

use std::sync::Arc;

use axum::http::Method;
use tracing::debug;

use super::ServiceAccounts;
use crate::pki::Tokens;
use crate::store::Store;

/// A user the API let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    /// A token of the token file.
    Static(String),
    /// A service account token's subject, `system:serviceaccount:<ns>:<name>`.
    ServiceAccount(String),
}

/// The TLS API's authenticator.
pub struct Authenticator {
    tokens: Tokens,
    service_accounts: Option<Arc<ServiceAccounts>>,
    store: Arc<Store>,
}

impl Authenticator {
    pub fn new(
        tokens: Tokens,
        service_accounts: Option<Arc<ServiceAccounts>>,
        store: Arc<Store>,
    ) -> Self {
        Authenticator {
            tokens,
            service_accounts,
            store,
        }
    }

    /// The user of a bearer token, or `None` (then the answer is 401).
    pub fn authenticate(&self, token: &str) -> Option<User> {
        if let Some(u) = self.tokens.authenticate(token) {
            return Some(User::Static(u.name.clone()));
        }
        // A JWT is three base64url parts; anything else is no service account token.
        if token.split('.').count() != 3 {
            return None;
        }
        let sa = self.service_accounts.as_ref()?;
        match sa.authenticate(token, &self.store) {
            Ok(sub) => Some(User::ServiceAccount(sub)),
            Err(reason) => {
                debug!(%reason, "refused a service account token");
                None
            }
        }
    }
}

impl User {
    /// Whether the user may make this request; the apiserver's 403 message otherwise.
    pub fn authorize(&self, method: &Method, path: &str) -> Result<(), String> {
        let User::ServiceAccount(sub) = self else {
            return Ok(());
        };
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        // `.../pods/<name>/exec|attach|portforward`: a way into the pod, not a read.
        if let ["api", "v1", "namespaces", ns, "pods", name, sub_resource] = segments.as_slice()
            && ["exec", "attach", "portforward"].contains(sub_resource)
        {
            return Err(format!(
                "pods \"{name}\" is forbidden: User \"{sub}\" cannot create resource \"pods/{sub_resource}\" in API group \"\" in the namespace \"{ns}\""
            ));
        }
        // Secrets: a default service account reads none on a Kubernetes cluster either, and
        // one pod's token must not hand it every Secret of the node.
        let (watch, rest) = match segments.as_slice() {
            ["api", "v1", "watch", rest @ ..] => (true, rest),
            ["api", "v1", rest @ ..] => (false, rest),
            _ => (false, &[][..]),
        };
        let (ns, resource, name) = match rest {
            ["namespaces", ns, resource, tail @ ..] => (Some(*ns), *resource, tail.first()),
            [resource, tail @ ..] => (None, *resource, tail.first()),
            [] => (None, "", None),
        };
        if resource == "secrets" {
            let verb = match (name, watch) {
                (_, true) => "watch",
                (Some(_), _) => "get",
                (None, _) => "list",
            };
            let what = match name {
                Some(n) => format!("secrets \"{n}\""),
                None => "secrets".into(),
            };
            let scope = match ns {
                Some(ns) => format!("in the namespace \"{ns}\""),
                None => "at the cluster scope".into(),
            };
            return Err(format!(
                "{what} is forbidden: User \"{sub}\" cannot {verb} resource \"secrets\" in API group \"\" {scope}"
            ));
        }
        if method == Method::GET || method == Method::HEAD {
            return Ok(());
        }
        let verb = match *method {
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "use",
        };
        Err(format!(
            "forbidden: User \"{sub}\" cannot {verb} path \"{path}\": service account tokens are read-only on skiff"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_accounts_read_but_do_not_exec_or_write() {
        let sa = User::ServiceAccount("system:serviceaccount:default:default".into());
        assert!(sa.authorize(&Method::GET, "/api/v1/pods").is_ok());
        assert!(
            sa.authorize(&Method::GET, "/api/v1/namespaces/default/pods/web/log")
                .is_ok()
        );
        let e = sa
            .authorize(&Method::POST, "/api/v1/namespaces/default/pods/web/exec")
            .unwrap_err();
        assert_eq!(
            e,
            "pods \"web\" is forbidden: User \"system:serviceaccount:default:default\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"default\""
        );
        assert!(
            sa.authorize(&Method::GET, "/api/v1/namespaces/default/pods/web/exec")
                .is_err()
        );
        assert!(
            sa.authorize(&Method::POST, "/apis/skiff.dev/v1/images/pull")
                .unwrap_err()
                .contains("cannot create path")
        );
        // No Secret, by any path.
        assert_eq!(
            sa.authorize(&Method::GET, "/api/v1/namespaces/default/secrets/db")
                .unwrap_err(),
            "secrets \"db\" is forbidden: User \"system:serviceaccount:default:default\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\""
        );
        assert!(
            sa.authorize(&Method::GET, "/api/v1/secrets")
                .unwrap_err()
                .contains(
                    "cannot list resource \"secrets\" in API group \"\" at the cluster scope"
                )
        );
        assert!(
            sa.authorize(&Method::GET, "/api/v1/watch/namespaces/kube-system/secrets")
                .unwrap_err()
                .contains("cannot watch")
        );
        // A ConfigMap that happens to be called "secrets" is not a Secret.
        assert!(
            sa.authorize(
                &Method::GET,
                "/api/v1/namespaces/default/configmaps/secrets"
            )
            .is_ok()
        );
        let admin = User::Static("admin".into());
        assert!(
            admin
                .authorize(&Method::POST, "/api/v1/namespaces/default/pods/web/exec")
                .is_ok()
        );
    }
}
