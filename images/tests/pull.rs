//! Pulls from a real registry (Debian's `docker-registry`) on loopback. Needs root (layers
//! are unpacked with their owners and whiteouts) and the peers; says so and passes otherwise.

mod support;

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use images::{
    Credential, Credentials, ImageStore, LayerPhase, PullError, PullOptions, Puller, PullerConfig,
    RegistriesConfig, Timeouts,
};
use support::{Compress, Layout, Proxy, Registry, Silent, require_tools};

fn puller(root: &Path, config: PullerConfig) -> Puller {
    Puller::new(ImageStore::open(root).unwrap(), config)
}

/// A config that reaches `hosts` over plain HTTP, with short timeouts.
fn http_config(host: &str) -> PullerConfig {
    let toml = format!("[registry.\"{host}\"]\nplain_http = true\n");
    PullerConfig {
        registries: RegistriesConfig::parse(&toml, "test").unwrap(),
        timeouts: Timeouts {
            connect: Duration::from_secs(2),
            response: Duration::from_secs(5),
            idle: Duration::from_secs(5),
        },
        ..PullerConfig::default()
    }
}

/// Nothing but the image index (if any) is left: no staging, no stray blobs or layers.
fn assert_clean(root: &Path) {
    let store = ImageStore::open(root).unwrap();
    assert!(store.list().unwrap().is_empty(), "images left");
    for dir in ["tmp", "blobs/sha256", "layers"] {
        let left: Vec<_> = fs::read_dir(root.join(dir)).unwrap().collect();
        assert!(left.is_empty(), "{dir} not empty: {left:?}");
    }
}

fn busybox_registry() -> (Registry, tempfile::TempDir) {
    let registry = Registry::start();
    let layout = tempfile::tempdir().unwrap();
    support::busybox_layout(layout.path());
    registry.push(layout.path(), "latest", "test/busybox:latest", &[]);
    // The same image as a Docker v2 schema 2 manifest.
    registry.push(
        layout.path(),
        "latest",
        "test/busybox-docker:v1",
        &["--format", "v2s2"],
    );
    (registry, layout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the registry tools"]
async fn pulls_oci_and_docker_manifests_and_digests() {
    require_tools();
    let (registry, _layout) = busybox_registry();
    let host = registry.host();
    let root = tempfile::tempdir().unwrap();
    let p = puller(root.path(), http_config(&host));

    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let options = PullOptions {
        progress: Some(Arc::new(move |e: &images::Progress| {
            sink.lock().unwrap().push(e.clone())
        })),
        ..PullOptions::default()
    };
    let reference = format!("{host}/test/busybox");
    let image = p.pull(&reference, &options).await.unwrap();
    assert_eq!(image.names, [format!("{host}/test/busybox:latest")]);
    assert_eq!(image.config.cmd, ["/bin/sh"]);
    let dirs = p.store().layer_dirs(&image).unwrap();
    assert_eq!(dirs.len(), 1);
    assert!(dirs[0].join("bin/busybox").is_file());
    assert!(
        fs::symlink_metadata(dirs[0].join("bin/sh"))
            .unwrap()
            .is_symlink()
    );
    {
        let events = events.lock().unwrap();
        let last = events.last().unwrap();
        assert_eq!(last.phase, LayerPhase::Done);
        assert_eq!(last.done, last.total);
        assert!(events.iter().any(|e| e.phase == LayerPhase::Downloading));
        assert!(events.iter().any(|e| e.phase == LayerPhase::Unpacking));
    }

    // Docker v2s2: same config and layers, another manifest; nothing new to download.
    let docker = p
        .pull(
            &format!("{host}/test/busybox-docker:v1"),
            &PullOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(docker.id, image.id);
    assert_ne!(docker.manifest_digest, image.manifest_digest);
    assert_eq!(docker.diff_ids, image.diff_ids);

    // Digest-pinned.
    let pinned = format!("{host}/test/busybox@{}", image.manifest_digest);
    let by_digest = p.pull(&pinned, &PullOptions::default()).await.unwrap();
    assert_eq!(by_digest.id, image.id);
    assert_eq!(p.store().resolve(&pinned).unwrap().unwrap().id, image.id);

    // Missing tag and unknown digest: NotFound, naming the reference.
    let err = p
        .pull(
            &format!("{host}/test/busybox:nope"),
            &PullOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("test/busybox:nope"), "{err}");
    let wrong = format!("{host}/test/busybox@sha256:{}", "0".repeat(64));
    let err = p.pull(&wrong, &PullOptions::default()).await.unwrap_err();
    assert!(matches!(err, PullError::NotFound { .. }), "{err:?}");
    let err = p
        .pull(&format!("{host}/test/absent:1"), &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::NotFound { .. }), "{err:?}");
    assert!(
        fs::read_dir(root.path().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the registry tools"]
async fn multi_layer_zstd_and_multi_arch_index() {
    require_tools();
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(dir.path());
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let amd = layout.image(
        "amd64",
        &[
            (
                vec![("etc/one", b"1".to_vec()), ("data/big", big.clone())],
                Compress::Gzip,
            ),
            (vec![("etc/two", b"2".to_vec())], Compress::Zstd),
            (vec![("etc/three", b"3".to_vec())], Compress::None),
        ],
    );
    let arm = layout.image(
        "arm64",
        &[(vec![("etc/arm", b"arm".to_vec())], Compress::Gzip)],
    );
    let (index, index_digest) = layout.index(&[&arm.manifest, &amd.manifest]);
    layout.tag(index, "multi");
    // Another image sharing the first layer.
    let shared = layout.image(
        "amd64",
        &[
            (
                vec![("etc/one", b"1".to_vec()), ("data/big", big)],
                Compress::Gzip,
            ),
            (vec![("etc/four", b"4".to_vec())], Compress::Gzip),
        ],
    );
    layout.tag(shared.manifest.clone(), "shared");
    registry.push(
        dir.path(),
        "multi",
        "test/multi:v1",
        &["--all", "--preserve-digests"],
    );
    registry.push(dir.path(), "shared", "test/shared:v1", &[]);

    let proxy = Proxy::start(registry.port, u64::MAX, 0).await;
    let host = proxy.host();
    let root = tempfile::tempdir().unwrap();
    let p = puller(root.path(), http_config(&host));
    let image = p
        .pull(&format!("{host}/test/multi:v1"), &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(
        image.manifest_digest, amd.manifest_digest,
        "amd64 manifest chosen"
    );
    assert_eq!(image.id, amd.config_digest);
    assert_eq!(image.diff_ids, amd.diff_ids);
    let dirs = p.store().layer_dirs(&image).unwrap();
    assert_eq!(fs::read(dirs[1].join("etc/two")).unwrap(), b"2");
    assert_eq!(fs::read(dirs[2].join("etc/three")).unwrap(), b"3");
    assert_eq!(
        fs::metadata(dirs[0].join("data/big")).unwrap().len(),
        3_000_000
    );
    // Index digest pins the whole multi-arch image.
    let pinned = format!("{host}/test/multi@{index_digest}");
    assert_eq!(p.store().resolve(&pinned).unwrap().unwrap().id, image.id);
    let before = proxy.count("/blobs/");
    assert_eq!(
        before,
        4,
        "config + 3 layers: {:?}",
        proxy.requests.lock().unwrap()
    );
    let again = p.pull(&pinned, &PullOptions::default()).await.unwrap();
    assert_eq!(again.id, image.id);
    assert_eq!(proxy.count("/blobs/"), before, "nothing downloaded again");

    // The shared layer is neither downloaded nor stored twice.
    let s = p
        .pull(&format!("{host}/test/shared:v1"), &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(s.diff_ids[0], image.diff_ids[0]);
    assert_eq!(shared.layer_digests[0], amd.layer_digests[0]);
    assert_eq!(
        proxy.count(&shared.layer_digests[0]),
        1,
        "only the first pull fetched it"
    );
    assert_eq!(
        proxy.count("/blobs/"),
        before + 2,
        "config + new layer only"
    );
    let layers = fs::read_dir(root.path().join("layers")).unwrap().count();
    assert_eq!(layers, 4);

    // Garbage collection: at 90% disk use, the unused image goes, the kept one stays with
    // the layer they shared.
    let keep: HashSet<String> = [image.id.clone()].into();
    let full = images::DiskUsage {
        capacity: 1000,
        available: 100,
    };
    let report = p
        .store()
        .prune_with_usage(&keep, &images::GcPolicy::default(), full)
        .unwrap();
    assert_eq!(report.removed, std::slice::from_ref(&s.id));
    assert_eq!(fs::read_dir(root.path().join("layers")).unwrap().count(), 3);
    assert!(p.store().layer_dirs(&image).is_ok());
    let report = p.store().prune_unused(&HashSet::new()).unwrap();
    assert_eq!(report.removed, std::slice::from_ref(&image.id));
    drop(p);
    assert_clean(root.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the registry tools"]
async fn corrupted_blob_fails_and_leaves_store_clean() {
    require_tools();
    let (registry, layout) = busybox_registry();
    let host = registry.host();
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.path().join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(
            layout
                .path()
                .join("blobs/sha256")
                .join(manifest_digest.strip_prefix("sha256:").unwrap()),
        )
        .unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let data = registry.blob_data(layer);
    let mut bytes = fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&data, bytes).unwrap();

    let root = tempfile::tempdir().unwrap();
    let p = puller(root.path(), http_config(&host));
    let err = p
        .pull(&format!("{host}/test/busybox"), &PullOptions::default())
        .await
        .unwrap_err();
    match &err {
        PullError::DigestMismatch { expected, .. } => assert_eq!(expected, layer),
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(err.to_string().contains(layer), "{err}");
    drop(p);
    assert_clean(root.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the registry tools"]
async fn dropped_connections_resume_or_fail_clearly() {
    require_tools();
    let (registry, _layout) = busybox_registry();
    // Cut the first two connections after 200 kB of response (inside the ~1 MB layer).
    let proxy = Proxy::start(registry.port, 200_000, 2).await;
    let host = proxy.host();
    let root = tempfile::tempdir().unwrap();
    let p = puller(root.path(), http_config(&host));
    let image = p
        .pull(&format!("{host}/test/busybox"), &PullOptions::default())
        .await
        .unwrap();
    assert!(
        p.store().layer_dirs(&image).unwrap()[0]
            .join("bin/busybox")
            .is_file()
    );
    assert_eq!(proxy.cuts_left.load(std::sync::atomic::Ordering::SeqCst), 0);
    let log = registry.log();
    assert!(
        log.contains("206") || proxy.count("/blobs/") >= 3,
        "resumed with Range requests"
    );

    // Without retries the cut is a clear connection error and the store stays clean.
    let proxy = Proxy::start(registry.port, 200_000, 1).await;
    let host = proxy.host();
    let root = tempfile::tempdir().unwrap();
    let p = puller(
        root.path(),
        PullerConfig {
            retries: 0,
            ..http_config(&host)
        },
    );
    let err = p
        .pull(&format!("{host}/test/busybox"), &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("/blobs/sha256:"), "{err}");
    drop(p);
    assert_clean(root.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_registry_times_out() {
    let silent = Silent::start();
    let host = format!("127.0.0.1:{}", silent.port);
    let root = tempfile::tempdir().unwrap();
    let mut config = http_config(&host);
    config.timeouts.response = Duration::from_millis(500);
    let p = puller(root.path(), config);
    let started = std::time::Instant::now();
    let err = p
        .pull(&format!("{host}/test/busybox"), &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("within"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the registry tools"]
async fn concurrent_pulls_share_one_download() {
    require_tools();
    let (registry, _layout) = busybox_registry();
    let proxy = Proxy::start(registry.port, u64::MAX, 0).await;
    let host = proxy.host();
    let root = tempfile::tempdir().unwrap();
    let p = puller(root.path(), http_config(&host));
    let reference = format!("{host}/test/busybox:latest");
    let pulls = (0..5).map(|_| {
        let p = p.clone();
        let r = reference.clone();
        tokio::spawn(async move { p.pull(&r, &PullOptions::default()).await })
    });
    let mut ids = HashSet::new();
    for handle in pulls.collect::<Vec<_>>() {
        ids.insert(handle.await.unwrap().unwrap().id);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(
        proxy.count("/manifests/"),
        1,
        "{:?}",
        proxy.requests.lock().unwrap()
    );
    assert_eq!(proxy.count("/blobs/"), 2, "config and layer once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the registry tools"]
async fn tls_registry_with_basic_auth() {
    require_tools();
    let registry = Registry::start_secure();
    let layout = tempfile::tempdir().unwrap();
    support::busybox_layout(layout.path());
    registry.push(layout.path(), "latest", "private/busybox:latest", &[]);
    let host = registry.host();
    let reference = format!("{host}/private/busybox");
    let ca = registry.secure.as_ref().unwrap().ca_file.clone();
    let config = |docker_config: Option<&Path>| PullerConfig {
        extra_ca_file: Some(ca.clone()),
        docker_config: docker_config.map(Path::to_owned),
        timeouts: Timeouts {
            connect: Duration::from_secs(2),
            response: Duration::from_secs(5),
            idle: Duration::from_secs(5),
        },
        ..PullerConfig::default()
    };

    // No credentials.
    let root = tempfile::tempdir().unwrap();
    let p = puller(root.path(), config(None));
    let err = p
        .pull(&reference, &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains("no credentials"), "{err}");

    // Wrong password.
    let mut wrong = Credentials::new();
    wrong.add(
        &host,
        Credential {
            username: "user".into(),
            password: "nope".into(),
        },
    );
    let err = p
        .pull(
            &reference,
            &PullOptions {
                credentials: wrong,
                ..PullOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("rejected"), "{err}");

    // Explicit credentials (as from an imagePullSecret).
    let secret = format!(r#"{{"auths":{{"{host}":{{"username":"user","password":"pass"}}}}}}"#);
    let creds = Credentials::from_docker_config(secret.as_bytes(), "secret").unwrap();
    let image = p
        .pull(
            &reference,
            &PullOptions {
                credentials: creds,
                ..PullOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(
        p.store().layer_dirs(&image).unwrap()[0]
            .join("bin/busybox")
            .is_file()
    );

    // The node's config.json (base64 auth).
    let root = tempfile::tempdir().unwrap();
    let docker_config = root.path().join("config.json");
    fs::write(
        &docker_config,
        format!(r#"{{"auths":{{"https://{host}":{{"auth":"dXNlcjpwYXNz"}}}}}}"#),
    )
    .unwrap();
    let store_root = root.path().join("store");
    let p = puller(&store_root, config(Some(&docker_config)));
    p.pull(&reference, &PullOptions::default()).await.unwrap();

    // Without the CA the certificate is refused, and the message says so.
    let root = tempfile::tempdir().unwrap();
    let registries = format!("[registry.\"{host}\"]\n");
    let no_ca = PullerConfig {
        registries: RegistriesConfig::parse(&registries, "t").unwrap(),
        ..PullerConfig::default()
    };
    let p = puller(root.path(), no_ca);
    let err = p
        .pull(&reference, &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the registry tools"]
async fn mirrors_are_tried_first() {
    require_tools();
    let (registry, _layout) = busybox_registry();
    let silent = Silent::start();
    // A dead mirror (times out), then a working one; the registry itself does not exist.
    let toml = format!(
        "[registry.\"registry.skiff.invalid\"]\nmirrors = [\"http://127.0.0.1:{}\", \"http://{}\"]\n",
        silent.port,
        registry.host()
    );
    let root = tempfile::tempdir().unwrap();
    let p = puller(
        root.path(),
        PullerConfig {
            registries: RegistriesConfig::parse(&toml, "t").unwrap(),
            timeouts: Timeouts {
                connect: Duration::from_secs(1),
                response: Duration::from_millis(500),
                idle: Duration::from_secs(2),
            },
            ..PullerConfig::default()
        },
    );
    let image = p
        .pull(
            "registry.skiff.invalid/test/busybox",
            &PullOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(image.names, ["registry.skiff.invalid/test/busybox:latest"]);
    let err = p
        .pull(
            "registry.skiff.invalid/test/busybox:nope",
            &PullOptions::default(),
        )
        .await
        .unwrap_err();
    // The working mirror said NotFound; the registry itself cannot be resolved: its error is last.
    assert!(
        matches!(err, PullError::Connect { .. } | PullError::NotFound { .. }),
        "{err:?}"
    );
}
