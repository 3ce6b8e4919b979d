//! Workload objects (Deployments, ReplicaSets, ReplicationControllers) as served: those of the
//! manifest directory (kept here with the status their controller gives them) and those made
//! through the API or by a controller (the API object store, persisted). A manifest object wins
//! over an API one of the same name, as for every other kind.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde_json::Value;

use super::{ObjKey, Store, WatchKind};

/// Annotations a controller sets on the objects it runs; a manifest edit keeps them.
fn controller_annotation(key: &str) -> bool {
    key.starts_with("deployment.kubernetes.io/")
}

/// A stable UID for a manifest workload: the same name in the same place is the same object
/// across edits and restarts (an edit is a rollout, not a new Deployment).
fn manifest_uid(node: &str, key: &ObjKey) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [node, "workload", &key.0, &key.1, &key.2] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    super::uid_from_hex(&hex)
}

fn without_rv(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    v
}

impl Store {
    /// Replaces the workloads of the manifest directory; returns whether any changed. Each
    /// keeps its UID, creation time, status and controller annotations across edits, and its
    /// `metadata.generation` goes up when its spec changes.
    pub fn set_manifest_workloads(&self, new: BTreeMap<ObjKey, Value>) -> bool {
        let mut inner = self.write();
        let old = std::mem::take(&mut inner.manifest_workloads);
        let mut out = BTreeMap::new();
        let mut changed = false;
        for (key, mut v) in new {
            let prev = old.get(&key);
            let meta = v["metadata"].as_object_mut().expect("checked objects");
            let uid = prev
                .and_then(|p| p["metadata"]["uid"].as_str().map(String::from))
                .unwrap_or_else(|| manifest_uid(&self.node_name, &key));
            meta.insert("uid".into(), uid.into());
            let created = prev
                .map(|p| p["metadata"]["creationTimestamp"].clone())
                .filter(|c| !c.is_null())
                .unwrap_or_else(|| Timestamp::now().to_string().into());
            meta.insert("creationTimestamp".into(), created);
            crate::kube::workload::with_identity(&key.0, &mut v);
            if key.0 == "daemonsets" {
                crate::kube::workload::set_template_generation(prev, &mut v);
            }
            let generation = match prev {
                Some(p) if p["spec"] == v["spec"] => p["metadata"]["generation"].as_i64(),
                Some(p) => p["metadata"]["generation"].as_i64().map(|g| g + 1),
                None => None,
            }
            .unwrap_or(1);
            v["metadata"]["generation"] = generation.into();
            if let Some(p) = prev {
                if let Some(ann) = p["metadata"]["annotations"].as_object() {
                    for (k, a) in ann.iter().filter(|(k, _)| controller_annotation(k)) {
                        v["metadata"]["annotations"][k] = a.clone();
                    }
                }
                if !p["status"].is_null() {
                    v["status"] = p["status"].clone();
                }
            }
            match prev {
                Some(p) if without_rv(p) == v => {
                    v["metadata"]["resourceVersion"] = p["metadata"]["resourceVersion"].clone();
                }
                _ => {
                    changed = true;
                    let rv = Self::take_rv(&mut inner);
                    v["metadata"]["resourceVersion"] = rv.to_string().into();
                    let kind = if prev.is_some() {
                        WatchKind::Modified
                    } else {
                        WatchKind::Added
                    };
                    self.record_kind(&mut inner, &key.0, kind, rv, v.clone());
                }
            }
            out.insert(key, v);
        }
        for (key, mut v) in old {
            if !out.contains_key(&key) {
                changed = true;
                let rv = Self::take_rv(&mut inner);
                v["metadata"]["resourceVersion"] = rv.to_string().into();
                self.record_kind(&mut inner, &key.0, WatchKind::Deleted, rv, v);
            }
        }
        inner.manifest_workloads = out;
        drop(inner);
        if changed {
            self.bump();
        }
        changed
    }

    /// One workload as served.
    pub fn workload(&self, key: &ObjKey) -> Option<Value> {
        let inner = self.read();
        inner
            .manifest_workloads
            .get(key)
            .or_else(|| inner.api_objects.get(key))
            .cloned()
    }

    /// The workloads of one kind (`deployments`, ...), in one namespace or all.
    pub fn list_workloads(&self, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        let inner = self.read();
        let mut out: BTreeMap<&ObjKey, &Value> = BTreeMap::new();
        for (k, v) in inner.api_objects.iter().chain(&inner.manifest_workloads) {
            if k.0 == plural && namespace.is_none_or(|n| n == k.1) {
                // The manifest's comes second and wins.
                out.insert(k, v);
            }
        }
        out.into_values().cloned().collect()
    }

    /// Changes a workload in place (its status, a controller's annotations, a ReplicaSet's
    /// replicas) if it still has `uid`; returns it as stored, or `None` if it is gone. The
    /// change and its resourceVersion happen under the store's lock, so a controller's
    /// read-modify-write never loses a write made meanwhile through the API. A changed spec
    /// bumps `metadata.generation`. Any other object made through the API is changed the same
    /// way (the API's mark of a deletion its finalizers hold).
    pub fn update_workload(
        &self,
        key: &ObjKey,
        uid: &str,
        f: impl FnOnce(&mut Value),
    ) -> std::io::Result<Option<Value>> {
        let mut inner = self.write();
        let manifest = inner.manifest_workloads.contains_key(key);
        let Some(cur) = (if manifest {
            inner.manifest_workloads.get(key)
        } else {
            inner.api_objects.get(key)
        })
        .cloned() else {
            return Ok(None);
        };
        if cur["metadata"]["uid"].as_str() != Some(uid) {
            return Ok(None);
        }
        let mut v = cur.clone();
        f(&mut v);
        if v == cur {
            return Ok(Some(cur));
        }
        if v["spec"] != cur["spec"] {
            let g = cur["metadata"]["generation"].as_i64().unwrap_or(1);
            v["metadata"]["generation"] = (g + 1).into();
        }
        let stored = if manifest {
            let rv = Self::take_rv(&mut inner);
            v["metadata"]["resourceVersion"] = rv.to_string().into();
            self.record_kind(&mut inner, &key.0, WatchKind::Modified, rv, v.clone());
            inner.manifest_workloads.insert(key.clone(), v.clone());
            v
        } else {
            self.put_api_locked(&mut inner, key.clone(), v)?
        };
        drop(inner);
        if !manifest {
            self.api_changed.send_modify(|x| *x += 1);
        }
        self.bump();
        Ok(Some(stored))
    }

    /// Whether `key` is a manifest workload.
    pub fn is_manifest_workload(&self, key: &ObjKey) -> bool {
        self.read().manifest_workloads.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dep(replicas: i64, file: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default",
                "annotations": {"skiff.dev/source": format!("manifest:{file}")}},
            "spec": {"replicas": replicas},
        })
    }

    fn key() -> ObjKey {
        ("deployments".into(), "default".into(), "web".into())
    }

    #[test]
    fn a_manifest_edit_keeps_identity_and_status_and_bumps_the_generation() {
        let s = Store::new("n");
        assert!(s.set_manifest_workloads(BTreeMap::from([(key(), dep(1, "a.yaml"))])));
        let first = s.workload(&key()).unwrap();
        assert_eq!(first["metadata"]["generation"], 1);
        let uid = first["metadata"]["uid"].as_str().unwrap().to_string();
        s.update_workload(&key(), &uid, |v| {
            v["status"] = json!({"replicas": 1});
            v["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "1".into();
        })
        .unwrap()
        .unwrap();
        // The same file again: nothing changes.
        assert!(!s.set_manifest_workloads(BTreeMap::from([(key(), dep(1, "a.yaml"))])));
        // An edit of the spec.
        assert!(s.set_manifest_workloads(BTreeMap::from([(key(), dep(3, "a.yaml"))])));
        let edited = s.workload(&key()).unwrap();
        assert_eq!(edited["metadata"]["uid"], uid.as_str());
        assert_eq!(edited["metadata"]["generation"], 2);
        assert_eq!(edited["status"]["replicas"], 1);
        assert_eq!(
            edited["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
            "1"
        );
        assert_eq!(s.list_workloads("deployments", Some("default")).len(), 1);
        assert!(s.list_workloads("deployments", Some("other")).is_empty());
        assert!(s.set_manifest_workloads(BTreeMap::new()));
        assert!(s.workload(&key()).is_none());
        // A stale UID changes nothing.
        assert!(
            s.update_workload(&key(), &uid, |v| v["status"] = json!({}))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn controller_updates_of_the_spec_bump_the_generation_and_watchers_see_them() {
        let s = Store::new("n");
        let mut v = dep(1, "x");
        v["metadata"]["uid"] = "u1".into();
        v["metadata"]["generation"] = 1.into();
        s.put_api_object(key(), v).unwrap();
        let w = s
            .watch_kind("deployments", Some(0), |_| Vec::new())
            .unwrap();
        let before = w.backlog.len();
        let got = s
            .update_workload(&key(), "u1", |v| v["spec"]["replicas"] = 5.into())
            .unwrap()
            .unwrap();
        assert_eq!(got["metadata"]["generation"], 2);
        let w = s
            .watch_kind("deployments", Some(0), |_| Vec::new())
            .unwrap();
        assert_eq!(w.backlog.len(), before + 1);
    }
}
