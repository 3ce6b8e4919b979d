//! Reads the manifest directory into the desired set of pods: on inotify
//! events and by a periodic full re-list, so a missed event heals.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Pod, Secret, Service};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use sha2::{Digest, Sha256};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::parse::{ManifestError, Object, ObjectRef, is_manifest_file, parse_file};

/// `(namespace, name)` of a pod.
pub type PodKey = (String, String);

/// A pod the directory asks for, with its UID derived from its content.
#[derive(Debug, Clone)]
pub struct DesiredPod {
    pub pod: Pod,
    pub source: PathBuf,
}

impl DesiredPod {
    pub fn uid(&self) -> &str {
        self.pod.metadata.uid.as_deref().unwrap_or_default()
    }
}

/// A problem with one file or one object, to show as an event and a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    pub file: PathBuf,
    pub object: Option<ObjectRef>,
    pub message: String,
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.object {
            Some(o) => write!(f, "{}: {o}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// The desired state read from the directory in one pass.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub pods: BTreeMap<PodKey, DesiredPod>,
    pub config_maps: BTreeMap<PodKey, ConfigMap>,
    pub secrets: BTreeMap<PodKey, Secret>,
    pub services: BTreeMap<PodKey, Arc<Service>>,
    pub endpoints: BTreeMap<PodKey, Arc<Endpoints>>,
    /// Deployments, ReplicaSets and ReplicationControllers, by (plural, namespace, name).
    pub workloads: BTreeMap<crate::store::ObjKey, serde_json::Value>,
    pub errors: Vec<SourceError>,
}

struct Cached {
    hash: [u8; 32],
    good: Vec<Object>,
    errors: Vec<SourceError>,
}

/// The manifest directory and what was last read from each file.
pub struct DirSource {
    dir: PathBuf,
    node_name: String,
    cache: HashMap<PathBuf, Cached>,
    /// Which file each pod came from last time, so a newcomer with a taken
    /// name is the one refused, not the pod already running.
    owners: HashMap<ObjectRef, PathBuf>,
}

/// Largest manifest file read: the API server's request size limit (3 MiB). A bigger file is
/// refused without being read whole (a 50 MB file took skiffd to 347 MB).
pub const MAX_MANIFEST_BYTES: u64 = 3 << 20;

/// Reads `file`, refusing one over `limit` bytes or one that is not a regular file, reading
/// at most `limit + 1` bytes whatever the file claims (it may grow meanwhile). The message
/// names the limit.
fn read_capped(file: &Path, limit: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let too_big = || {
        format!(
            "file is larger than {} ({limit} bytes), the API server's request size limit",
            crate::quantity::format_bytes(limit)
        )
    };
    // O_NONBLOCK: a FIFO swapped in after the directory listing must not block the reader.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(file)
        .map_err(|e| format!("cannot read: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("cannot read: not a regular file".into());
    }
    if meta.len() > limit {
        return Err(too_big());
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    f.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read: {e}"))?;
    if data.len() as u64 > limit {
        return Err(too_big());
    }
    Ok(data)
}

impl DirSource {
    pub fn new(dir: impl Into<PathBuf>, node_name: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            node_name: node_name.into(),
            cache: HashMap::new(),
            owners: HashMap::new(),
        }
    }

    /// Reads every manifest file. A file that fails keeps its last good objects.
    pub fn relist(&mut self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
                .filter(|e| e.file_name().to_str().is_some_and(is_manifest_file))
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect(),
            Err(e) => {
                snapshot.errors.push(SourceError {
                    file: self.dir.clone(),
                    object: None,
                    message: format!("cannot read manifest directory: {e}"),
                });
                Vec::new()
            }
        };
        files.sort();
        self.cache.retain(|path, _| files.contains(path));
        let mut candidates: BTreeMap<ObjectRef, Vec<(Object, PathBuf)>> = BTreeMap::new();
        for file in files {
            let (objects, errors) = self.read_file(&file);
            snapshot.errors.extend(errors);
            for obj in objects {
                candidates
                    .entry(obj.object_ref())
                    .or_default()
                    .push((obj, file.clone()));
            }
        }
        let mut owners = HashMap::new();
        for (oref, mut list) in candidates {
            let winner = self
                .owners
                .get(&oref)
                .and_then(|owner| list.iter().position(|(_, f)| f == owner))
                .unwrap_or(0);
            let (chosen, source) = list.remove(winner);
            for (_, other) in list {
                snapshot.errors.push(SourceError {
                    file: other,
                    object: Some(oref.clone()),
                    message: format!(
                        "duplicate {} name: already defined in {}",
                        oref.kind.to_lowercase(),
                        source.display()
                    ),
                });
            }
            owners.insert(oref.clone(), source.clone());
            let key = (oref.namespace, oref.name);
            let from = format!("manifest:{}", source.display());
            let mark = |meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
                meta.annotations
                    .get_or_insert_with(Default::default)
                    .insert(crate::store::SOURCE_ANNOTATION.into(), from.clone());
            };
            match chosen {
                Object::Pod(pod) => {
                    snapshot.pods.insert(key, DesiredPod { pod: *pod, source });
                }
                Object::ConfigMap(mut cm) => {
                    mark(&mut cm.metadata);
                    snapshot.config_maps.insert(key, *cm);
                }
                Object::Secret(mut secret) => {
                    mark(&mut secret.metadata);
                    snapshot.secrets.insert(key, *secret);
                }
                Object::Service(mut svc) => {
                    mark(&mut Arc::make_mut(&mut svc).metadata);
                    snapshot.services.insert(key, svc);
                }
                Object::Endpoints(mut ep) => {
                    mark(&mut Arc::make_mut(&mut ep).metadata);
                    snapshot.endpoints.insert(key, ep);
                }
                Object::Workload(w) => {
                    let mut v = w.value;
                    v["metadata"]["namespace"] = key.0.clone().into();
                    if !v["metadata"]["annotations"].is_object() {
                        v["metadata"]["annotations"] = serde_json::json!({});
                    }
                    v["metadata"]["annotations"][crate::store::SOURCE_ANNOTATION] =
                        from.clone().into();
                    snapshot
                        .workloads
                        .insert((w.kind.plural().to_string(), key.0, key.1), v);
                }
            }
        }
        self.owners = owners;
        snapshot
    }

    fn read_file(&mut self, file: &Path) -> (Vec<Object>, Vec<SourceError>) {
        let text = match read_capped(file, MAX_MANIFEST_BYTES) {
            Ok(t) => t,
            Err(message) => {
                let err = SourceError {
                    file: file.to_path_buf(),
                    object: None,
                    message,
                };
                let good = self
                    .cache
                    .get(file)
                    .map(|c| c.good.clone())
                    .unwrap_or_default();
                return (good, vec![err]);
            }
        };
        let hash: [u8; 32] = Sha256::digest(&text).into();
        if let Some(c) = self.cache.get(file)
            && c.hash == hash
        {
            return (c.good.clone(), c.errors.clone());
        }
        let previous = self
            .cache
            .get(file)
            .map(|c| c.good.clone())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let (good, errors) = match parse_file(file, &text) {
            Ok((objects, errs)) => {
                let mut good: Vec<Object> = objects
                    .into_iter()
                    .map(|o| match o {
                        Object::Pod(p) => Object::Pod(Box::new(self.stamp(*p, file))),
                        other => other,
                    })
                    .collect();
                // An object that turned invalid keeps running in its last good form.
                for e in &errs {
                    if let Some(o) = &e.object
                        && let Some(old) = previous.iter().find(|p| p.object_ref() == *o)
                    {
                        good.push(old.clone());
                    }
                }
                (
                    good,
                    errs.into_iter().map(|e| to_source_error(file, e)).collect(),
                )
            }
            Err(message) => (
                previous,
                vec![SourceError {
                    file: file.to_path_buf(),
                    object: None,
                    message,
                }],
            ),
        };
        self.cache.insert(
            file.to_path_buf(),
            Cached {
                hash,
                good: good.clone(),
                errors: errors.clone(),
            },
        );
        (good, errors)
    }

    /// Gives a static pod its identity like the kubelet: a UID hashed from the
    /// node, the file and the content, so an edit makes a new pod and a
    /// restart of skiffd finds the same one.
    fn stamp(&self, mut pod: Pod, file: &Path) -> Pod {
        let canonical = serde_json::to_vec(&pod).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(self.node_name.as_bytes());
        h.update([0]);
        h.update(file.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(&canonical);
        let d = h.finalize();
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        pod.metadata.uid = Some(crate::store::uid_from_hex(&hex));
        let ann = pod
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        ann.insert("kubernetes.io/config.source".into(), "file".into());
        ann.insert("kubernetes.io/config.hash".into(), hex[..32].to_string());
        // A file's pod is a static pod; its API object is what the kubelet calls a mirror pod,
        // which `kubectl drain` leaves alone (it cannot evict it).
        ann.insert("kubernetes.io/config.mirror".into(), hex[..32].to_string());
        ann.insert("skiff.dev/manifest".into(), file.display().to_string());
        ann.insert(
            crate::store::SOURCE_ANNOTATION.into(),
            format!("manifest:{}", file.display()),
        );
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some(self.node_name.clone());
        }
        pod
    }
}

fn to_source_error(file: &Path, e: ManifestError) -> SourceError {
    SourceError {
        file: file.to_path_buf(),
        object: e.object,
        message: e.message,
    }
}

/// Watches the directory and sends a fresh snapshot after every change (and
/// every `period`) until the receiver is dropped.
pub async fn watch(mut source: DirSource, period: Duration, tx: mpsc::Sender<Snapshot>) {
    let _ = std::fs::create_dir_all(&source.dir);
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .ok()
        .and_then(|i| {
            i.add_watch(
                &source.dir,
                AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_MODIFY
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_ATTRIB
                    | AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_MOVE_SELF,
            )
            .ok()?;
            // SAFETY: the Inotify owns its fd and keeps it open for as long as the AsyncFd lives.
            unsafe { AsyncFd::register(InotifyFd(i)) }.ok()
        });
    if inotify.is_none() {
        warn!(dir = %source.dir.display(), "inotify unavailable; relying on the periodic re-list");
    }
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if tx.send(source.relist()).await.is_err() {
            return;
        }
        match &inotify {
            Some(fd) => {
                tokio::select! {
                    _ = ticker.tick() => {}
                    changed = wait_change(fd) => {
                        if changed {
                            debug!("manifest directory changed");
                        }
                    }
                }
            }
            None => {
                ticker.tick().await;
            }
        }
    }
}

/// Waits for a change worth a re-list. A finished write (close, rename,
/// delete) counts at once; a file being created or written counts only when
/// its writer closes it, or after a short pause, so a half-written file is
/// not reported as broken.
async fn wait_change(fd: &AsyncFd<InotifyFd>) -> bool {
    const SETTLE: Duration = Duration::from_millis(250);
    let mut pending = false;
    loop {
        let ready = if pending {
            match tokio::time::timeout(SETTLE, fd.readable()).await {
                Ok(r) => r,
                Err(_) => return true,
            }
        } else {
            fd.readable().await
        };
        let Ok(mut guard) = ready else {
            return true;
        };
        let (complete, partial) = drain(&fd.get_ref().0);
        guard.clear_ready();
        if complete {
            return true;
        }
        pending |= partial;
    }
}

/// Lets tokio poll the inotify descriptor.
struct InotifyFd(Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Reads all queued events: (a completed change, a change still in progress).
fn drain(i: &Inotify) -> (bool, bool) {
    let done = AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_Q_OVERFLOW;
    let (mut complete, mut partial) = (false, false);
    while let Ok(events) = i.read_events() {
        if events.is_empty() {
            break;
        }
        for e in events {
            if e.mask.intersects(done) {
                complete = true;
            } else {
                partial = true;
            }
        }
    }
    (complete, partial)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: NAME\nspec:\n  containers:\n  - name: c\n    image: busybox\n";

    fn pod(name: &str) -> String {
        POD.replace("NAME", name)
    }

    #[test]
    fn relist_reads_files_ignores_others_and_keeps_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.yaml"), pod("a")).unwrap();
        std::fs::write(d.join("b.yml"), pod("b")).unwrap();
        std::fs::write(d.join(".hidden.yaml"), pod("h")).unwrap();
        std::fs::write(d.join("a.yaml~"), pod("t")).unwrap();
        std::fs::create_dir(d.join("sub.yaml")).unwrap();
        let mut src = DirSource::new(d, "node1");
        let s = src.relist();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        let names: Vec<&str> = s.pods.keys().map(|k| k.1.as_str()).collect();
        assert_eq!(names, vec!["a", "b"]);
        let uid_a = s.pods[&("default".into(), "a".into())].uid().to_string();
        assert_eq!(uid_a.len(), 36);

        // Same content: same UID (a restart adopts, nothing is replaced).
        let s2 = DirSource::new(d, "node1").relist();
        assert_eq!(s2.pods[&("default".into(), "a".into())].uid(), uid_a);

        // Broken file keeps its last good pod and reports the file.
        std::fs::write(d.join("a.yaml"), "kind: Pod\n  x: [").unwrap();
        let s3 = src.relist();
        assert_eq!(s3.pods[&("default".into(), "a".into())].uid(), uid_a);
        assert_eq!(s3.errors.len(), 1);
        assert!(s3.errors[0].to_string().contains("a.yaml"));

        // Edited file: new UID.
        std::fs::write(d.join("a.yaml"), pod("a").replace("busybox", "busybox:1")).unwrap();
        let s4 = src.relist();
        assert_ne!(s4.pods[&("default".into(), "a".into())].uid(), uid_a);
        assert!(s4.errors.is_empty());

        // Removed file: pod gone.
        std::fs::remove_file(d.join("b.yml")).unwrap();
        assert!(
            !src.relist()
                .pods
                .contains_key(&("default".into(), "b".into()))
        );
    }

    #[test]
    fn oversized_files_are_refused_naming_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("big.yaml"), pod("big")).unwrap();
        std::fs::write(d.join("ok.yaml"), pod("ok")).unwrap();
        let mut src = DirSource::new(d, "n");
        assert_eq!(src.relist().pods.len(), 2);
        // Over the API server's 3 MiB: refused (its last good pod stays), the others read.
        let mut text = pod("big");
        text.push_str(&format!("# {}\n", "x".repeat(MAX_MANIFEST_BYTES as usize)));
        std::fs::write(d.join("big.yaml"), &text).unwrap();
        let s = src.relist();
        assert_eq!(s.pods.len(), 2);
        assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
        let e = s.errors[0].to_string();
        assert!(
            e.contains("big.yaml") && e.contains("file is larger than 3Mi (3145728 bytes)"),
            "{e}"
        );
        // Exactly at the limit is fine; the reader never takes more than limit + 1 bytes.
        let f = d.join("edge");
        std::fs::write(&f, vec![b'a'; 100]).unwrap();
        assert_eq!(read_capped(&f, 100).unwrap().len(), 100);
        assert!(read_capped(&f, 99).unwrap_err().contains("larger than 99"));
    }

    #[test]
    fn duplicate_names_across_files_keep_the_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1.yaml"), pod("x")).unwrap();
        std::fs::write(dir.path().join("2.yaml"), pod("x")).unwrap();
        let s = DirSource::new(dir.path(), "n").relist();
        assert_eq!(s.pods.len(), 1);
        assert!(s.pods.values().next().unwrap().source.ends_with("1.yaml"));
        assert_eq!(s.errors.len(), 1);
        assert!(s.errors[0].message.contains("duplicate pod name"));
        assert!(s.errors[0].file.ends_with("2.yaml"));
    }

    #[test]
    fn a_running_pod_keeps_its_name_against_a_newcomer() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.yaml"), pod("x")).unwrap();
        let mut src = DirSource::new(dir.path(), "n");
        assert_eq!(src.relist().pods.len(), 1);
        std::fs::write(dir.path().join("a.yaml"), pod("x")).unwrap();
        let s = src.relist();
        assert!(s.pods.values().next().unwrap().source.ends_with("b.yaml"));
        assert!(s.errors[0].file.ends_with("a.yaml"));
    }

    #[test]
    fn object_turned_invalid_keeps_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(&f, pod("p")).unwrap();
        let mut src = DirSource::new(dir.path(), "n");
        let uid = src.relist().pods.values().next().unwrap().uid().to_string();
        std::fs::write(&f, pod("p").replace("name: c", "name: C_bad")).unwrap();
        let s = src.relist();
        assert_eq!(s.pods.values().next().unwrap().uid(), uid);
        assert_eq!(s.errors[0].object.as_ref().unwrap().name, "p");
    }
}
