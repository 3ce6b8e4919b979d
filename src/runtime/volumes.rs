//! Pod volumes on the host: emptyDir, hostPath, configMap, secret,
//! downwardAPI, projected (with service account tokens) and persistentVolumeClaim, and safe
//! subPath binds.
//!
//! ConfigMap-like volumes are written like the kubelet's atomic writer: the
//! files live in a timestamped directory, `..data` is a symlink to it, and
//! every visible name is a symlink through `..data`; an update writes a new
//! directory and swaps `..data` with one `rename`, so a reader never sees a
//! half-written volume.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};
use nix::mount::{MsFlags, mount};

use crate::kube::env::{EnvContext, field_value, resource_value};

/// Kubernetes' default file mode for configMap, secret and downwardAPI volumes.
pub const DEFAULT_MODE: u32 = 0o644;

/// A volume ready to be mounted into containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub path: PathBuf,
    /// The volume itself is read-only (e.g. a read-only PVC).
    pub read_only: bool,
}

/// Where a pod's volumes live.
pub struct Layout<'a> {
    pub pod_dir: &'a Path,
    /// Directory holding persistent volume claims (`<root>/volumes/pvc`).
    pub pvc_dir: &'a Path,
    /// The token issuer for `serviceAccountToken` sources and the CA of `kube-root-ca.crt`.
    pub service_accounts: Option<&'a crate::serviceaccount::ServiceAccounts>,
}

/// A ConfigMap of the store or, for `kube-root-ca.crt` (which the root CA publisher keeps in
/// every namespace of a cluster), the cluster CA.
fn config_map_of(
    layout: &Layout<'_>,
    cx: &EnvContext<'_>,
    ns: &str,
    name: &str,
) -> Option<ConfigMap> {
    if let Some(cm) = cx.store.config_map(ns, name) {
        return Some(cm);
    }
    let sa = layout.service_accounts?;
    (name == crate::serviceaccount::admission::ROOT_CA_CONFIG_MAP).then(|| ConfigMap {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("ca.crt".into(), sa.ca_pem().to_string())])),
        ..Default::default()
    })
}

/// Sets up (or refreshes) every volume of the pod. Errors name the volume.
pub fn setup(
    layout: &Layout<'_>,
    pod: &Pod,
    cx: &EnvContext<'_>,
) -> Result<BTreeMap<String, Ready>, String> {
    let mut out = BTreeMap::new();
    // The pod dir is the gate that keeps other host users out of its Secrets (see
    // `runtime::private`); it may be created here first.
    super::private::create_dir_all(layout.pod_dir)
        .map_err(|e| format!("creating {}: {e}", layout.pod_dir.display()))?;
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let fs_group = spec
        .security_context
        .as_ref()
        .and_then(|s| s.fs_group)
        .map(|g| g as u32);
    for v in spec.volumes.iter().flatten() {
        let ready = setup_one(layout, pod, &ns, v, cx, fs_group)
            .map_err(|e| format!("MountVolume.SetUp failed for volume \"{}\": {e}", v.name))?;
        out.insert(v.name.clone(), ready);
    }
    Ok(out)
}

fn kind_dir(layout: &Layout<'_>, kind: &str, name: &str) -> PathBuf {
    layout.pod_dir.join("volumes").join(kind).join(name)
}

fn setup_one(
    layout: &Layout<'_>,
    pod: &Pod,
    ns: &str,
    v: &Volume,
    cx: &EnvContext<'_>,
    fs_group: Option<u32>,
) -> Result<Ready, String> {
    let rw = |path: PathBuf| Ready {
        path,
        read_only: false,
    };
    if let Some(e) = &v.empty_dir {
        let dir = kind_dir(layout, "empty-dir", &v.name);
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        if e.medium.as_deref() == Some("Memory") {
            let size = e
                .size_limit
                .as_ref()
                .map(|q| crate::quantity::bytes(&q.0))
                .transpose()?;
            mount_tmpfs(&dir, size)?;
        } else if let Some(m) = e.medium.as_deref().filter(|m| !m.is_empty()) {
            return Err(format!(
                "emptyDir medium {m:?} is not supported (use \"\" or \"Memory\")"
            ));
        }
        // emptyDir is world-writable, like the kubelet makes it; fsGroup owns it.
        let mode = if fs_group.is_some() { 0o2777 } else { 0o777 };
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
        if let Some(g) = fs_group {
            let _ = nix::unistd::chown(&dir, None, Some(nix::unistd::Gid::from_raw(g)));
        }
        return Ok(rw(dir));
    }
    if let Some(h) = &v.host_path {
        let path = PathBuf::from(&h.path);
        check_host_path(&path, h.type_.as_deref().unwrap_or(""))?;
        return Ok(rw(path));
    }
    if let Some(pvc) = &v.persistent_volume_claim {
        crate::kube::validation::check_dns1123_subdomain(&pvc.claim_name)
            .map_err(|e| format!("claimName {:?}: {e}", pvc.claim_name))?;
        let dir = layout.pvc_dir.join(ns).join(&pvc.claim_name);
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        return Ok(Ready {
            path: dir,
            read_only: pvc.read_only.unwrap_or(false),
        });
    }
    let (kind, on_tmpfs, payload) = if let Some(c) = &v.config_map {
        let cm = config_map_of(layout, cx, ns, &c.name);
        let payload = match cm {
            Some(cm) => config_map_payload(&cm, c.items.as_deref(), c.default_mode)?,
            None if c.optional == Some(true) => BTreeMap::new(),
            None => return Err(format!("configmap \"{}\" not found", c.name)),
        };
        ("configmap", false, payload)
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let payload = match cx.store.secret(ns, &name) {
            Some(sec) => secret_payload(&sec, s.items.as_deref(), s.default_mode)?,
            None if s.optional == Some(true) => BTreeMap::new(),
            None => return Err(format!("secret \"{name}\" not found")),
        };
        ("secret", true, payload)
    } else if let Some(d) = &v.downward_api {
        let payload = downward_payload(pod, d.items.as_deref().unwrap_or(&[]), d.default_mode, cx)?;
        ("downward-api", false, payload)
    } else if let Some(p) = &v.projected {
        let mut payload = BTreeMap::new();
        for src in p.sources.iter().flatten() {
            let part = if let Some(c) = &src.config_map {
                match config_map_of(layout, cx, ns, &c.name) {
                    Some(cm) => config_map_payload(&cm, c.items.as_deref(), p.default_mode)?,
                    None if c.optional == Some(true) => BTreeMap::new(),
                    None => return Err(format!("configmap \"{}\" not found", c.name)),
                }
            } else if let Some(s) = &src.secret {
                match cx.store.secret(ns, &s.name) {
                    Some(sec) => secret_payload(&sec, s.items.as_deref(), p.default_mode)?,
                    None if s.optional == Some(true) => BTreeMap::new(),
                    None => return Err(format!("secret \"{}\" not found", s.name)),
                }
            } else if let Some(d) = &src.downward_api {
                downward_payload(pod, d.items.as_deref().unwrap_or(&[]), p.default_mode, cx)?
            } else if let Some(t) = &src.service_account_token {
                let sa = layout
                    .service_accounts
                    .ok_or("service account tokens are not available on this node")?;
                check_relative(&t.path)?;
                let secs = t
                    .expiration_seconds
                    .unwrap_or(crate::serviceaccount::admission::DEFAULT_EXPIRATION_SECONDS);
                let token = sa
                    .token(pod, t.audience.as_deref(), secs)
                    .map_err(|e| format!("fetching a service account token: {e}"))?;
                BTreeMap::from([(
                    t.path.clone(),
                    (token.into_bytes(), mode_of(None, p.default_mode)),
                )])
            } else {
                return Err(
                    "projected source kind is not supported (only secret, configMap, downwardAPI, serviceAccountToken)"
                        .into(),
                );
            };
            payload.extend(part);
        }
        ("projected", true, payload)
    } else {
        return Err("volume kind is not supported by this version of skiff".into());
    };
    let dir = kind_dir(layout, kind, &v.name);
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    if on_tmpfs {
        // Secrets never touch the disk.
        mount_tmpfs(&dir, None)?;
    }
    write_payload(&dir, &payload, fs_group)
        .map_err(|e| format!("writing {}: {e}", dir.display()))?;
    Ok(Ready {
        path: dir,
        read_only: true,
    })
}

/// A file of a ConfigMap-like volume: content and mode.
pub type Payload = BTreeMap<String, (Vec<u8>, u32)>;

fn mode_of(mode: Option<i32>, default: Option<i32>) -> u32 {
    mode.or(default)
        .map(|m| m as u32 & 0o7777)
        .unwrap_or(DEFAULT_MODE)
}

fn pick(
    all: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    what: &str,
) -> Result<Payload, String> {
    let mut out = Payload::new();
    match items {
        None => {
            for (k, v) in all {
                out.insert(k, (v, mode_of(None, default_mode)));
            }
        }
        Some(items) => {
            for it in items {
                let data = all
                    .get(&it.key)
                    .ok_or_else(|| format!("configuration key {:?} not found in {what}", it.key))?;
                check_relative(&it.path)?;
                out.insert(
                    it.path.clone(),
                    (data.clone(), mode_of(it.mode, default_mode)),
                );
            }
        }
    }
    Ok(out)
}

fn config_map_payload(
    cm: &ConfigMap,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
) -> Result<Payload, String> {
    let mut all: BTreeMap<String, Vec<u8>> = cm
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.clone().unwrap_or_default() {
        all.insert(k, v.0);
    }
    let name = cm.metadata.name.clone().unwrap_or_default();
    pick(all, items, default_mode, &format!("ConfigMap {name}"))
}

fn secret_payload(
    s: &Secret,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
) -> Result<Payload, String> {
    let all: BTreeMap<String, Vec<u8>> = s
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let name = s.metadata.name.clone().unwrap_or_default();
    pick(all, items, default_mode, &format!("Secret {name}"))
}

fn downward_payload(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    cx: &EnvContext<'_>,
) -> Result<Payload, String> {
    let mut out = Payload::new();
    for it in items {
        check_relative(&it.path)?;
        let value = if let Some(f) = &it.field_ref {
            field_value(&f.field_path, cx)?
        } else if let Some(r) = &it.resource_field_ref {
            let name = r.container_name.clone().unwrap_or_default();
            let c = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .find(|c| c.name == name)
                .ok_or_else(|| format!("resourceFieldRef: container {name:?} not found"))?;
            resource_value(&r.resource, r.divisor.as_ref().map(|q| q.0.as_str()), c, cx)?
        } else {
            return Err(format!(
                "downwardAPI item {:?} has no fieldRef or resourceFieldRef",
                it.path
            ));
        };
        out.insert(
            it.path.clone(),
            (value.into_bytes(), mode_of(it.mode, default_mode)),
        );
    }
    Ok(out)
}

/// A path inside a volume: relative, no `..` element, not starting with `..`.
pub fn check_relative(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if path.is_empty() || p.is_absolute() {
        return Err(format!("path {path:?} must be relative"));
    }
    if path.starts_with("..") {
        return Err(format!("path {path:?} must not start with '..'"));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("path {path:?} must not contain '..'"));
    }
    Ok(())
}

/// Writes `payload` into `dir` atomically (see the module docs). Does
/// nothing when the content is unchanged.
pub fn write_payload(dir: &Path, payload: &Payload, fs_group: Option<u32>) -> io::Result<()> {
    for path in payload.keys() {
        check_relative(path).map_err(io::Error::other)?;
    }
    let data_link = dir.join("..data");
    let current = fs::read_link(&data_link).ok();
    if let Some(cur) = &current
        && same_content(&dir.join(cur), payload)
    {
        return Ok(());
    }
    let stamp = format!(
        "..{}_{}",
        jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f"),
        std::process::id()
    );
    let ts_dir = dir.join(&stamp);
    fs::create_dir_all(&ts_dir)?;
    fs::set_permissions(&ts_dir, fs::Permissions::from_mode(0o755))?;
    for (path, (data, mode)) in payload {
        let file = ts_dir.join(path);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(*mode)
            .open(&file)?;
        f.write_all(data)?;
        fs::set_permissions(&file, fs::Permissions::from_mode(*mode))?;
        if let Some(g) = fs_group {
            let _ = nix::unistd::chown(&file, None, Some(nix::unistd::Gid::from_raw(g)));
        }
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link)?;
    fs::rename(&tmp_link, &data_link)?;
    // Visible names are symlinks through ..data, so they switch together.
    let tops: std::collections::BTreeSet<String> = payload
        .keys()
        .filter_map(|p| p.split('/').next().map(String::from))
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link)?;
        }
    }
    for e in fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") {
            if name != "..data" && name != stamp {
                let _ = fs::remove_dir_all(e.path());
            }
            continue;
        }
        if !tops.contains(&name) {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(())
}

fn same_content(dir: &Path, payload: &Payload) -> bool {
    let mut count = 0;
    for (path, (data, mode)) in payload {
        let p = dir.join(path);
        match (fs::read(&p), fs::metadata(&p)) {
            (Ok(d), Ok(m)) if &d == data && m.mode() & 0o7777 == *mode => count += 1,
            _ => return false,
        }
    }
    // No stale files either.
    let mut existing = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                existing += 1;
            }
        }
    }
    count == existing
}

/// Mounts a tmpfs (mode 0755, `nosuid,nodev`, `size` bytes at most) on `dir`, unless
/// something is mounted there already.
pub fn mount_tmpfs(dir: &Path, size: Option<i64>) -> Result<(), String> {
    if is_mountpoint(dir) {
        return Ok(());
    }
    let mut opts = "mode=0755".to_string();
    if let Some(s) = size {
        opts.push_str(&format!(",size={s}"));
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| format!("mounting tmpfs on {}: {e}", dir.display()))
}

/// Whether `path` is a mount point (its device differs from its parent's, or
/// mountinfo lists it).
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(canon) = fs::canonicalize(path) else {
        return false;
    };
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = canon.to_string_lossy();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

/// mountinfo escapes space, tab, newline and backslash as octal. Works on
/// bytes so that non-ASCII paths come back as the same UTF-8.
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)))
            .then(|| {
                u32::from(b[i + 1] - b'0') * 64
                    + u32::from(b[i + 2] - b'0') * 8
                    + u32::from(b[i + 3] - b'0')
            })
            .and_then(|v| u8::try_from(v).ok());
        if let (b'\\', Some(v)) = (b[i], octal) {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// hostPath `type` checks, creating what `...OrCreate` asks for.
pub fn check_host_path(path: &Path, kind: &str) -> Result<(), String> {
    let meta = fs::metadata(path);
    let p = path.display();
    let is = |f: &dyn Fn(&fs::Metadata) -> bool| meta.as_ref().is_ok_and(f);
    use std::os::unix::fs::FileTypeExt;
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_err() {
                fs::create_dir_all(path).map_err(|e| format!("creating {p}: {e}"))?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o755))
                    .map_err(|e| e.to_string())?;
            } else if !is(&|m| m.is_dir()) {
                return Err(format!(
                    "hostPath type check failed: {p} is not a directory"
                ));
            }
            Ok(())
        }
        "Directory" if is(&|m| m.is_dir()) => Ok(()),
        "Directory" => Err(format!(
            "hostPath type check failed: {p} is not a directory"
        )),
        "FileOrCreate" => {
            if meta.is_err() {
                if let Some(parent) = path.parent()
                    && !parent.exists()
                {
                    return Err(format!(
                        "hostPath type check failed: parent of {p} does not exist"
                    ));
                }
                fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o644)
                    .open(path)
                    .map_err(|e| format!("creating {p}: {e}"))?;
            } else if !is(&|m| m.is_file()) {
                return Err(format!("hostPath type check failed: {p} is not a file"));
            }
            Ok(())
        }
        "File" if is(&|m| m.is_file()) => Ok(()),
        "File" => Err(format!("hostPath type check failed: {p} is not a file")),
        "Socket" if is(&|m| m.file_type().is_socket()) => Ok(()),
        "Socket" => Err(format!(
            "hostPath type check failed: {p} is not a socket file"
        )),
        "CharDevice" if is(&|m| m.file_type().is_char_device()) => Ok(()),
        "CharDevice" => Err(format!(
            "hostPath type check failed: {p} is not a character device"
        )),
        "BlockDevice" if is(&|m| m.file_type().is_block_device()) => Ok(()),
        "BlockDevice" => Err(format!(
            "hostPath type check failed: {p} is not a block device"
        )),
        other => Err(format!("hostPath type {other:?} is not valid")),
    }
}

/// Opens `sub` inside `root` without ever leaving it: each component is
/// opened with `O_NOFOLLOW` relative to its parent; a symlink is resolved by
/// hand and refused if it points outside the volume (CVE-2017-1002101,
/// CVE-2021-25741). Missing directories are created, as the kubelet does.
/// Returns an `O_PATH` descriptor of the verified inode.
pub fn open_in_volume(root: &Path, sub: &str) -> Result<OwnedFd, String> {
    if Path::new(sub).is_absolute() {
        return Err(format!("subPath {sub:?} must be a relative path"));
    }
    let open = |dirfd: i32, name: &str| -> io::Result<OwnedFd> {
        let c = CString::new(name).map_err(io::Error::other)?;
        // SAFETY: openat with a valid dirfd and a NUL-terminated name; returns a new fd or -1.
        let fd = unsafe {
            libc::openat(
                dirfd,
                c.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let root_fd =
        fs::File::open(root).map_err(|e| format!("opening volume {}: {e}", root.display()))?;
    let mut stack: Vec<OwnedFd> = vec![OwnedFd::from(root_fd)];
    let mut todo: std::collections::VecDeque<String> = sub
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(String::from)
        .collect();
    let mut links = 0;
    while let Some(comp) = todo.pop_front() {
        if comp == ".." {
            if stack.len() <= 1 {
                return Err(format!("subPath {sub:?} points outside the volume"));
            }
            stack.pop();
            continue;
        }
        let parent = stack.last().expect("root stays").as_raw_fd();
        let fd = match open(parent, &comp) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let c = CString::new(comp.as_str()).map_err(|e| e.to_string())?;
                // SAFETY: mkdirat with a valid dirfd and a NUL-terminated name.
                let rc = unsafe { libc::mkdirat(parent, c.as_ptr(), 0o755) };
                if rc != 0 {
                    let err = io::Error::last_os_error();
                    if err.raw_os_error() != Some(libc::EEXIST) {
                        return Err(format!("creating subPath component {comp:?}: {err}"));
                    }
                }
                open(parent, &comp)
                    .map_err(|e| format!("opening subPath component {comp:?}: {e}"))?
            }
            Err(e) => return Err(format!("opening subPath component {comp:?}: {e}")),
        };
        let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| e.to_string())?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            links += 1;
            if links > 40 {
                return Err(format!(
                    "subPath {sub:?}: too many levels of symbolic links"
                ));
            }
            let c = CString::new(comp.as_str()).map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 4096];
            // SAFETY: readlinkat into a buffer of the given length.
            let n =
                unsafe { libc::readlinkat(parent, c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                return Err(format!(
                    "reading link {comp:?}: {}",
                    io::Error::last_os_error()
                ));
            }
            let target = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
            if target.starts_with('/') {
                return Err(format!(
                    "subPath {sub:?}: symlink {comp:?} points outside the volume (to {target})"
                ));
            }
            let mut rest: Vec<String> = target
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(String::from)
                .collect();
            rest.extend(todo.drain(..));
            todo = rest.into();
            continue;
        }
        stack.push(fd);
    }
    Ok(stack.pop().expect("root stays"))
}

/// Bind-mounts the verified subPath of a volume onto `target` (created as a
/// file or directory to match) and returns `target` for the container spec.
pub fn bind_subpath(root: &Path, sub: &str, target: &Path) -> Result<PathBuf, String> {
    let fd = open_in_volume(root, sub)?;
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| e.to_string())?;
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    if is_mountpoint(target) {
        return Ok(target.to_path_buf());
    }
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        fs::create_dir_all(target).map_err(|e| e.to_string())?;
    } else {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(target)
            .map_err(|e| e.to_string())?;
    }
    let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
    mount(
        Some(source.as_str()),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind-mounting subPath {sub:?}: {e}"))?;
    Ok(target.to_path_buf())
}

/// Unmounts every mount at or below `dir`, deepest first. Idempotent.
pub fn unmount_below(dir: &Path) {
    let Ok(canon) = fs::canonicalize(dir) else {
        return;
    };
    let prefix = canon.to_string_lossy().into_owned();
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    mounts.dedup();
    for m in mounts {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(items: &[(&str, &str)]) -> Payload {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), (v.as_bytes().to_vec(), DEFAULT_MODE)))
            .collect()
    }

    #[test]
    fn atomic_writer_swaps_data_and_removes_stale_names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_payload(
            d,
            &payload(&[("color", "blue"), ("conf/app.ini", "x=1")]),
            None,
        )
        .unwrap();
        assert_eq!(fs::read_to_string(d.join("color")).unwrap(), "blue");
        assert_eq!(fs::read_to_string(d.join("conf/app.ini")).unwrap(), "x=1");
        assert!(
            fs::symlink_metadata(d.join("color"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let first = fs::read_link(d.join("..data")).unwrap();
        // Unchanged content: nothing rewritten.
        write_payload(
            d,
            &payload(&[("color", "blue"), ("conf/app.ini", "x=1")]),
            None,
        )
        .unwrap();
        assert_eq!(fs::read_link(d.join("..data")).unwrap(), first);
        write_payload(d, &payload(&[("color", "red")]), None).unwrap();
        assert_eq!(fs::read_to_string(d.join("color")).unwrap(), "red");
        assert!(!d.join("conf").exists());
        assert!(!d.join(&first).exists(), "old data dir kept");
        assert_eq!(fs::metadata(d.join("color")).unwrap().mode() & 0o777, 0o644);
    }

    #[test]
    fn keys_cannot_write_outside_the_volume() {
        for bad in ["../evil", "/etc/passwd", "..data/x", "a/../../b", ""] {
            assert!(check_relative(bad).is_err(), "{bad}");
            let dir = tempfile::tempdir().unwrap();
            let err = write_payload(dir.path(), &payload(&[(bad, "x")]), None);
            assert!(err.is_err(), "{bad}");
        }
        assert!(check_relative("a/b.txt").is_ok());
    }

    #[test]
    fn subpath_resolution_stays_inside_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        fs::create_dir_all(root.join("data/inner")).unwrap();
        fs::write(root.join("data/file"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../", root.join("data/up")).unwrap();
        std::os::unix::fs::symlink("inner", root.join("data/rel")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("data/inner/escape")).unwrap();
        std::os::unix::fs::symlink("../..", root.join("data/inner/top")).unwrap();
        assert!(
            open_in_volume(&root, "data/inner/top").is_ok(),
            "a link back to the root is inside"
        );
        assert!(open_in_volume(&root, "data/file").is_ok());
        assert!(
            open_in_volume(&root, "data/rel").is_ok(),
            "a link inside the volume is fine"
        );
        assert!(
            open_in_volume(&root, "new/dir").is_ok(),
            "missing dirs are created"
        );
        assert!(root.join("new/dir").is_dir());
        for bad in [
            "abs",
            "abs/passwd",
            "data/up",
            "data/up/x",
            "..",
            "data/../../x",
            "data/inner/escape",
            "/etc",
        ] {
            let err = open_in_volume(&root, bad).unwrap_err();
            assert!(
                err.contains("outside") || err.contains("relative"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b/c\\134d"), "/a b/c\\d");
        assert_eq!(
            unescape_mountinfo("/tmp/caf\u{e9}/x\\011"),
            "/tmp/caf\u{e9}/x\t"
        );
        assert_eq!(unescape_mountinfo("/end\\04"), "/end\\04");
    }

    #[test]
    fn host_path_types() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(check_host_path(&d.join("x"), "Directory").is_err());
        check_host_path(&d.join("x"), "DirectoryOrCreate").unwrap();
        assert!(d.join("x").is_dir());
        check_host_path(&d.join("x"), "Directory").unwrap();
        assert!(check_host_path(&d.join("x"), "File").is_err());
        check_host_path(&d.join("f"), "FileOrCreate").unwrap();
        check_host_path(&d.join("f"), "File").unwrap();
        assert!(
            check_host_path(&d.join("f"), "Socket")
                .unwrap_err()
                .contains("not a socket")
        );
        assert!(check_host_path(&d.join("nope/f"), "FileOrCreate").is_err());
        check_host_path(&d.join("anything"), "").unwrap();
        assert!(check_host_path(d, "Bogus").is_err());
    }
}
