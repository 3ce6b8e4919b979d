//! skiff's exports read by the peers: skopeo and umoci must see skiff's own digests.

mod support;

use std::fs;
use std::process::Command;

use images::{ExportFormat, ImageStore, PullOptions, Puller};
use support::{Registry, require_tools, run, sha256};

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap()
}

fn skopeo(args: &[&str]) -> String {
    run(Command::new("skopeo").arg("--insecure-policy").args(args))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the registry tools"]
async fn exports_match_skopeo_and_umoci() {
    require_tools();
    let registry = Registry::start();
    let layout = tempfile::tempdir().unwrap();
    support::busybox_layout(layout.path());
    registry.push(layout.path(), "latest", "test/busybox:latest", &[]);
    registry.push(
        layout.path(),
        "latest",
        "test/busybox-docker:v1",
        &["--format", "v2s2"],
    );
    let host = registry.host();
    let root = tempfile::tempdir().unwrap();
    let toml = format!("[registry.\"{host}\"]\nplain_http = true\n");
    // Two stores: the image id is the config digest, so one store would keep one manifest.
    let puller = |dir: &str| {
        Puller::new(
            ImageStore::open(root.path().join(dir)).unwrap(),
            images::PullerConfig {
                registries: images::RegistriesConfig::parse(&toml, "t").unwrap(),
                ..Default::default()
            },
        )
    };
    let p = puller("store");
    let oci = p
        .pull(
            &format!("{host}/test/busybox:latest"),
            &PullOptions::default(),
        )
        .await
        .unwrap();
    let pd = puller("store-docker");
    let docker = pd
        .pull(
            &format!("{host}/test/busybox-docker:v1"),
            &PullOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(docker.id, oci.id);
    let store = p.store();
    let out = root.path();

    // OCI layout directory: skopeo and umoci.
    let dir = out.join("oci");
    store
        .export(
            &format!("{host}/test/busybox:latest"),
            &dir,
            ExportFormat::OciDir,
        )
        .unwrap();
    let src = format!("oci:{}:latest", dir.display());
    let raw = skopeo(&["inspect", "--raw", &src]);
    assert_eq!(sha256(raw.as_bytes()), oci.manifest_digest);
    let info = json(&skopeo(&["inspect", &src]));
    assert_eq!(info["Digest"], oci.manifest_digest.as_str());
    let layers = json(&raw)["layers"].clone();
    assert_eq!(info["Layers"][0], layers[0]["digest"]);
    let config = skopeo(&["inspect", "--config", "--raw", &src]);
    assert_eq!(sha256(config.as_bytes()), oci.id);
    let umoci_image = format!("{}:latest", dir.display());
    let stat = json(&run(Command::new("umoci").args([
        "stat",
        "--json",
        "--image",
        &umoci_image,
    ])));
    assert_eq!(stat["history"][0]["layer"]["digest"], layers[0]["digest"]);
    assert_eq!(stat["history"][0]["diff_id"], oci.diff_ids[0].as_str());
    let bundle = out.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &umoci_image])
        .arg(&bundle));
    assert!(bundle.join("rootfs/bin/busybox").is_file());

    // Exporting into a non-empty directory is refused.
    let err = store
        .export(&oci.id, &dir, ExportFormat::OciDir)
        .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");

    // OCI archive.
    let tar = out.join("oci.tar");
    store
        .export(&oci.id, &tar, ExportFormat::OciArchive)
        .unwrap();
    let info = json(&skopeo(&[
        "inspect",
        &format!("oci-archive:{}:latest", tar.display()),
    ]));
    assert_eq!(info["Digest"], oci.manifest_digest.as_str());

    // Docker archive of the Docker-manifest image.
    let tar = out.join("docker.tar");
    pd.store()
        .export(
            &format!("{host}/test/busybox-docker:v1"),
            &tar,
            ExportFormat::DockerArchive,
        )
        .unwrap();
    let src = format!("docker-archive:{}", tar.display());
    let config = skopeo(&["inspect", "--config", "--raw", &src]);
    assert_eq!(sha256(config.as_bytes()), docker.id);
    let info = json(&skopeo(&["inspect", &src]));
    // A docker archive names layers by their uncompressed digests.
    assert_eq!(info["Layers"][0], docker.diff_ids[0].as_str(), "{info}");
    // And skiff imports its own export back to the same image.
    let again = ImageStore::open(out.join("store3")).unwrap();
    let imported = again.import(&tar).unwrap();
    assert_eq!(imported[0].id, docker.id);
    assert_eq!(imported[0].manifest_digest, docker.manifest_digest);
    assert!(
        fs::read_dir(out.join("store3/tmp"))
            .unwrap()
            .next()
            .is_none()
    );
}
