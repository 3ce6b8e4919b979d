//! Store tests: archives are built in the tests themselves.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::EntryType;

use crate::digest::of_bytes;
use crate::{Error, ImageStore, UnpackError};

/// One tar entry. Names are written raw, so tests can build hostile archives.
pub(crate) enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Owned(&'a str, &'a [u8], u32, u64, u64),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    CharDev(&'a str),
}

pub(crate) fn layer_tar(entries: &[E<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let (name, kind, data, mode, link, uid, gid): (
            &str,
            _,
            &[u8],
            u32,
            Option<&str>,
            u64,
            u64,
        ) = match entry {
            E::Dir(n, m) => (n, EntryType::Directory, b"", *m, None, 0, 0),
            E::File(n, d, m) => (n, EntryType::Regular, d, *m, None, 0, 0),
            E::Owned(n, d, m, u, g) => (n, EntryType::Regular, d, *m, None, *u, *g),
            E::Symlink(n, t) => (n, EntryType::Symlink, b"", 0o777, Some(t), 0, 0),
            E::Hardlink(n, t) => (n, EntryType::Link, b"", 0o644, Some(t), 0, 0),
            E::CharDev(n) => (n, EntryType::Char, b"", 0o644, None, 0, 0),
        };
        let mut h = tar::Header::new_gnu();
        {
            let raw = &mut h.as_old_mut().name;
            raw.fill(0);
            raw[..name.len()].copy_from_slice(name.as_bytes());
        }
        if let Some(link) = link {
            let raw = &mut h.as_old_mut().linkname;
            raw.fill(0);
            raw[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_000_000);
        h.set_cksum();
        builder.append(&h, data).unwrap();
    }
    builder.into_inner().unwrap()
}

pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Compress {
    None,
    Gzip,
    Zstd,
}

/// Writes a blob into an OCI layout directory; returns (digest, size).
fn put(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let digest = of_bytes(bytes);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(blobs.join(hex(&digest)), bytes).unwrap();
    (digest, bytes.len())
}

fn config_json(diff_ids: &[String], cmd: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "created": "2024-05-01T12:00:00Z",
        "architecture": crate::layout::host_arch(),
        "os": "linux",
        "config": {
            "Cmd": [cmd],
            "Entrypoint": null,
            "Env": ["PATH=/bin"],
            "WorkingDir": "/srv",
            "User": "65534",
            "ExposedPorts": {"80/tcp": {}},
            "Labels": {"a": "b"}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// Adds an image to the OCI layout at `dir` (appending to its index.json); returns its id.
pub(crate) fn add_oci_image(
    dir: &Path,
    layers: &[Vec<u8>],
    compress: Compress,
    annotations: &[(&str, &str)],
    cmd: &str,
) -> String {
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        diff_ids.push(of_bytes(layer));
        let (blob, media_type) = match compress {
            Compress::None => (layer.clone(), "application/vnd.oci.image.layer.v1.tar"),
            Compress::Gzip => (gzip(layer), "application/vnd.oci.image.layer.v1.tar+gzip"),
            Compress::Zstd => (
                zstd_multi_frame(layer),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        let (digest, size) = put(dir, &blob);
        layer_descs
            .push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": size}));
    }
    let (config_digest, config_size) = put(dir, &config_json(&diff_ids, cmd));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layer_descs,
    }))
    .unwrap();
    let (manifest_digest, manifest_size) = put(dir, &manifest);
    let index_path = dir.join("index.json");
    let mut index: serde_json::Value = match fs::read(&index_path) {
        Ok(b) => serde_json::from_slice(&b).unwrap(),
        Err(_) => serde_json::json!({"schemaVersion": 2, "manifests": []}),
    };
    let annotations: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
        .collect();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": annotations,
        }));
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    config_digest
}

/// zstd in two frames with a skippable frame between, as zstd:chunked layers are.
fn zstd_multi_frame(data: &[u8]) -> Vec<u8> {
    use ruzstd::encoding::{CompressionLevel, compress_to_vec};
    let (a, b) = data.split_at(data.len() / 2);
    let mut out = compress_to_vec(a, CompressionLevel::Fastest);
    out.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 9, 9, 9]);
    out.extend(compress_to_vec(b, CompressionLevel::Fastest));
    out
}

/// Tars a directory tree (regular files only, as an OCI layout has).
fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_dir_all(".", dir).unwrap();
    builder.into_inner().unwrap()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn base_layer() -> Vec<u8> {
    layer_tar(&[
        E::Dir("bin/", 0o755),
        E::File("bin/busybox", b"#!binary", 0o755),
        E::Symlink("bin/sh", "busybox"),
        E::Hardlink("bin/ash", "bin/busybox"),
        E::Dir("etc/", 0o755),
        E::File("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644),
        E::File("etc/shadow", b"", 0o640),
        E::Dir("tmp/", 0o1777),
        E::Dir("srv/", 0o750),
        E::File("srv/index.html", b"hi", 0o644),
    ])
}

fn top_layer(marker: &str) -> Vec<u8> {
    layer_tar(&[
        E::Dir("srv/", 0o750),
        E::File("srv/marker", marker.as_bytes(), 0o600),
    ])
}

fn layer_entries(store: &ImageStore, image: &crate::Image) -> Vec<PathBuf> {
    store.layer_dirs(image).unwrap()
}

fn count_dir(path: &Path) -> usize {
    fs::read_dir(path).unwrap().count()
}

#[test]
fn imports_oci_layout_directory() {
    let (src, root) = (tmp(), tmp());
    let id = add_oci_image(
        src.path(),
        &[base_layer(), top_layer("one")],
        Compress::Gzip,
        &[
            ("io.containerd.image.name", "skiff.test/busybox:latest"),
            ("org.opencontainers.image.ref.name", "latest"),
        ],
        "/bin/sh",
    );
    let store = ImageStore::open(root.path().join("images")).unwrap();
    let imported = store.import(src.path()).unwrap();
    assert_eq!(imported.len(), 1);
    let image = &imported[0];
    assert_eq!(image.id, id);
    assert_eq!(image.names, ["skiff.test/busybox:latest"]);
    assert_eq!(image.created.as_deref(), Some("2024-05-01T12:00:00Z"));
    assert_eq!(image.config.cmd, ["/bin/sh"]);
    assert!(image.config.entrypoint.is_empty());
    assert_eq!(image.config.working_dir, "/srv");
    assert_eq!(image.config.user, "65534");
    assert_eq!(image.config.exposed_ports, ["80/tcp"]);
    assert_eq!(image.config.labels.get("a").map(String::as_str), Some("b"));
    assert_eq!(image.diff_ids.len(), 2);
    assert!(image.size > 0);

    let dirs = layer_entries(&store, image);
    assert_eq!(dirs.len(), 2);
    let base = &dirs[0];
    assert_eq!(fs::read(base.join("bin/busybox")).unwrap(), b"#!binary");
    assert_eq!(
        fs::read_link(base.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::metadata(base.join("bin/ash")).unwrap().ino(),
        fs::metadata(base.join("bin/busybox")).unwrap().ino()
    );
    assert_eq!(
        fs::metadata(base.join("tmp")).unwrap().permissions().mode() & 0o7777,
        0o1777
    );
    assert_eq!(
        fs::metadata(base.join("srv")).unwrap().permissions().mode() & 0o7777,
        0o750
    );
    assert_eq!(
        fs::metadata(base.join("etc/shadow"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o640
    );
    assert_eq!(
        fs::metadata(base.join("etc/passwd")).unwrap().mtime(),
        1_000_000
    );
    assert_eq!(fs::metadata(base.join("srv")).unwrap().mtime(), 1_000_000);
    assert_eq!(
        fs::metadata(base).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(fs::read(dirs[1].join("srv/marker")).unwrap(), b"one");

    // Persisted and resolvable.
    let reopened = ImageStore::open(root.path().join("images")).unwrap();
    assert_eq!(reopened.list().unwrap(), imported);
    assert_eq!(
        reopened.resolve("skiff.test/busybox").unwrap().as_ref(),
        Some(image)
    );
    assert_eq!(reopened.resolve(&id).unwrap().as_ref(), Some(image));
    let by_digest = format!("skiff.test/busybox@{}", image.manifest_digest);
    assert_eq!(reopened.resolve(&by_digest).unwrap().as_ref(), Some(image));
    assert_eq!(reopened.resolve("busybox").unwrap(), None);

    // Importing again changes nothing.
    assert_eq!(store.import(src.path()).unwrap(), imported);
    assert_eq!(store.list().unwrap().len(), 1);
    // Temp files are gone.
    assert_eq!(count_dir(&root.path().join("images/tmp")), 0);
}

#[test]
fn ref_name_only_gets_localhost_import_name() {
    let (src, root) = (tmp(), tmp());
    add_oci_image(
        src.path(),
        &[base_layer()],
        Compress::None,
        &[("org.opencontainers.image.ref.name", "v1")],
        "a",
    );
    add_oci_image(
        src.path(),
        &[top_layer("x")],
        Compress::None,
        &[("org.opencontainers.image.ref.name", "quay.io/org/app:2")],
        "b",
    );
    add_oci_image(src.path(), &[top_layer("y")], Compress::None, &[], "c");
    let store = ImageStore::open(root.path()).unwrap();
    let images = store.import(src.path()).unwrap();
    let names: Vec<_> = images.iter().map(|i| i.names.clone()).collect();
    assert_eq!(
        names,
        [
            vec!["localhost/import:v1".to_owned()],
            vec!["quay.io/org/app:2".to_owned()],
            vec![]
        ]
    );
}

#[test]
fn imports_oci_layout_tar_and_gzipped_tar_and_zstd_layers() {
    let (src, root, out) = (tmp(), tmp(), tmp());
    let id = add_oci_image(
        src.path(),
        &[base_layer(), top_layer("z")],
        Compress::Zstd,
        &[("io.containerd.image.name", "example.com/zstd:1")],
        "z",
    );
    let tar_path = out.path().join("image.tar");
    let bytes = tar_dir(src.path());
    fs::write(&tar_path, &bytes).unwrap();
    let tgz_path = out.path().join("image.tar.gz");
    fs::write(&tgz_path, gzip(&bytes)).unwrap();

    let store = ImageStore::open(root.path()).unwrap();
    let images = store.import(&tar_path).unwrap();
    assert_eq!(images[0].id, id);
    let dirs = store.layer_dirs(&images[0]).unwrap();
    assert_eq!(fs::read(dirs[1].join("srv/marker")).unwrap(), b"z");

    let root2 = tmp();
    let store2 = ImageStore::open(root2.path()).unwrap();
    assert_eq!(store2.import(&tgz_path).unwrap()[0].id, id);
}

/// A pre-25 `docker save` archive: manifest.json, `<hex>.json` configs, `<id>/layer.tar`,
/// a duplicated layer as a symlink, two images.
fn docker_save(path: &Path, base: &[u8], top: &[u8]) -> (String, String) {
    let config1 = config_json(&[of_bytes(base)], "one");
    let config2 = config_json(&[of_bytes(base), of_bytes(top)], "two");
    let (c1, c2) = (of_bytes(&config1), of_bytes(&config2));
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": format!("{}.json", hex(&c1)), "RepoTags": ["busybox:1.0"], "Layers": ["aaa/layer.tar"]},
        {"Config": format!("{}.json", hex(&c2)), "RepoTags": ["example.com/x/y:2", "y"], "Layers": ["bbb/layer.tar", "ccc/layer.tar"]},
    ]))
    .unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        builder.append_data(&mut h, name, data).unwrap();
    };
    add(&format!("{}.json", hex(&c1)), &config1);
    add(&format!("{}.json", hex(&c2)), &config2);
    add("aaa/layer.tar", base);
    add("ccc/layer.tar", &gzip(top));
    add("manifest.json", &manifest);
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(EntryType::Symlink);
    h.set_size(0);
    builder
        .append_link(&mut h, "bbb/layer.tar", "../aaa/layer.tar")
        .unwrap();
    fs::write(path, builder.into_inner().unwrap()).unwrap();
    (c1, c2)
}

#[test]
fn imports_docker_save_archive() {
    let (out, root) = (tmp(), tmp());
    let archive = out.path().join("save.tar");
    let (c1, c2) = docker_save(&archive, &base_layer(), &top_layer("docker"));
    let store = ImageStore::open(root.path()).unwrap();
    let images = store.import(&archive).unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[0].id, c1);
    assert_eq!(images[0].names, ["docker.io/library/busybox:1.0"]);
    assert_eq!(images[1].id, c2);
    assert_eq!(
        images[1].names,
        ["docker.io/library/y:latest", "example.com/x/y:2"]
    );
    assert_eq!(images[1].config.cmd, ["two"]);
    let dirs = store.layer_dirs(&images[1]).unwrap();
    // The base layer is shared.
    assert_eq!(store.layer_dirs(&images[0]).unwrap()[0], dirs[0]);
    assert_eq!(fs::read(dirs[1].join("srv/marker")).unwrap(), b"docker");
    assert_eq!(store.resolve("y").unwrap().unwrap().id, c2);
    assert_eq!(store.resolve("busybox:1.0").unwrap().unwrap().id, c1);
}

#[test]
fn layers_are_shared_and_collected() {
    let (src, root) = (tmp(), tmp());
    let a = add_oci_image(
        src.path(),
        &[base_layer(), top_layer("a")],
        Compress::Gzip,
        &[("io.containerd.image.name", "a")],
        "a",
    );
    let b = add_oci_image(
        src.path(),
        &[base_layer(), top_layer("b")],
        Compress::Gzip,
        &[("io.containerd.image.name", "b")],
        "b",
    );
    let store = ImageStore::open(root.path()).unwrap();
    let images = store.import(src.path()).unwrap();
    assert_eq!(images.len(), 2);
    let layers = root.path().join("layers");
    assert_eq!(count_dir(&layers), 3, "base layer stored once");
    let blobs = root.path().join("blobs/sha256");
    // 3 layers + 2 configs + 2 manifests.
    assert_eq!(count_dir(&blobs), 7);

    store.remove("a").unwrap();
    assert!(store.resolve(&a).unwrap().is_none());
    assert_eq!(count_dir(&layers), 2);
    assert_eq!(count_dir(&blobs), 4);
    let b_image = store.resolve("b").unwrap().unwrap();
    assert_eq!(b_image.id, b);
    for dir in store.layer_dirs(&b_image).unwrap() {
        assert!(dir.is_dir());
    }
    assert!(matches!(store.remove("a"), Err(Error::NotFound(_))));
    store.remove(&b).unwrap();
    assert_eq!(count_dir(&layers), 0);
    assert_eq!(count_dir(&blobs), 0);
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn names_move_and_untag() {
    let (src1, src2, root) = (tmp(), tmp(), tmp());
    let old = add_oci_image(
        src1.path(),
        &[base_layer()],
        Compress::None,
        &[("io.containerd.image.name", "app:1")],
        "old",
    );
    let new = add_oci_image(
        src2.path(),
        &[top_layer("n")],
        Compress::None,
        &[("io.containerd.image.name", "app:1")],
        "new",
    );
    let store = ImageStore::open(root.path()).unwrap();
    store.import(src1.path()).unwrap();
    store.import(src2.path()).unwrap();
    assert_eq!(store.resolve("app:1").unwrap().unwrap().id, new);
    let old_image = store.resolve(&old).unwrap().unwrap();
    assert!(old_image.names.is_empty(), "name moved to the new image");

    // Give `new` a second name, then untag one: the image stays.
    let src3 = tmp();
    add_oci_image(
        src3.path(),
        &[top_layer("n")],
        Compress::None,
        &[("io.containerd.image.name", "app:2")],
        "new",
    );
    store.import(src3.path()).unwrap();
    let image = store.resolve("app:2").unwrap().unwrap();
    assert_eq!(
        image.names,
        ["docker.io/library/app:1", "docker.io/library/app:2"]
    );
    store.remove("app:1").unwrap();
    assert_eq!(
        store.resolve("app:2").unwrap().unwrap().names,
        ["docker.io/library/app:2"]
    );
    assert!(store.resolve("app:1").unwrap().is_none());
}

#[test]
fn resolves_short_ids() {
    let (src, root) = (tmp(), tmp());
    let id = add_oci_image(src.path(), &[base_layer()], Compress::None, &[], "x");
    let store = ImageStore::open(root.path()).unwrap();
    store.import(src.path()).unwrap();
    let h = hex(&id);
    for r in [
        id.as_str(),
        &h[..12],
        &h[..20],
        h,
        &format!("sha256:{}", &h[..5]),
    ] {
        assert_eq!(
            store.resolve(r).unwrap().map(|i| i.id),
            Some(id.clone()),
            "{r}"
        );
    }
    // Too short to be an id, and no such name.
    assert_eq!(store.resolve(&h[..6]).unwrap(), None);
    assert!(matches!(store.resolve("Bad:Ref"), Err(Error::Reference(_))));
    assert!(matches!(
        store.resolve("sha256:xyz"),
        Err(Error::InvalidDigest(_))
    ));
    // "sha256:" alone matches every image: with two images that is ambiguous.
    let src2 = tmp();
    add_oci_image(src2.path(), &[top_layer("q")], Compress::None, &[], "y");
    store.import(src2.path()).unwrap();
    assert!(matches!(
        store.resolve("sha256:"),
        Err(Error::InvalidDigest(_)) | Err(Error::Ambiguous(_))
    ));
}

#[test]
fn open_removes_crash_garbage() {
    let root = tmp();
    let store = ImageStore::open(root.path()).unwrap();
    let half = root.path().join("layers/.tmp-0123-99-0");
    fs::create_dir_all(half.join("usr/bin")).unwrap();
    fs::write(half.join("usr/bin/x"), b"x").unwrap();
    fs::write(root.path().join("tmp/blob-1-2-3"), b"partial").unwrap();
    fs::create_dir_all(root.path().join("tmp/import-1-2-3/sub")).unwrap();
    drop(store);
    ImageStore::open(root.path()).unwrap();
    assert!(!half.exists());
    assert_eq!(count_dir(&root.path().join("tmp")), 0);
    assert_eq!(count_dir(&root.path().join("layers")), 0);
}

/// What a pull SIGKILLed inside its commit leaves: blobs and an unpacked layer already renamed
/// into `blobs/` and `layers/`, the index not saved. No image refers to them; `open` removes
/// them and keeps the stored image's.
#[test]
fn open_removes_blobs_and_layers_no_image_refers_to() {
    let (src, root) = (tmp(), tmp());
    let id = add_oci_image(
        src.path(),
        &[base_layer()],
        Compress::Gzip,
        &[("io.containerd.image.name", "kept")],
        "kept",
    );
    let store = ImageStore::open(root.path()).unwrap();
    store.import(src.path()).unwrap();
    let (blobs, layers) = (root.path().join("blobs/sha256"), root.path().join("layers"));
    let (n_blobs, n_layers) = (count_dir(&blobs), count_dir(&layers));
    let orphan_blob = blobs.join("ab".repeat(32));
    fs::write(&orphan_blob, b"a layer of a pull killed mid-commit").unwrap();
    let orphan_layer = layers.join("cd".repeat(32));
    fs::create_dir_all(orphan_layer.join("srv")).unwrap();
    fs::write(orphan_layer.join("srv/file"), b"x").unwrap();
    drop(store);
    let store = ImageStore::open(root.path()).unwrap();
    assert!(!orphan_blob.exists());
    assert!(!orphan_layer.exists());
    assert_eq!(count_dir(&blobs), n_blobs);
    assert_eq!(count_dir(&layers), n_layers);
    let image = store.resolve("kept").unwrap().unwrap();
    assert_eq!(image.id, id);
    for dir in store.layer_dirs(&image).unwrap() {
        assert!(dir.is_dir());
    }
}

#[test]
fn corrupt_blob_is_rejected_and_nothing_kept() {
    let (src, root) = (tmp(), tmp());
    add_oci_image(
        src.path(),
        &[base_layer()],
        Compress::Gzip,
        &[("io.containerd.image.name", "c")],
        "c",
    );
    // Corrupt the layer blob (the biggest file).
    let blobs = src.path().join("blobs/sha256");
    let biggest = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&biggest).unwrap();
    bytes.push(0);
    fs::write(&biggest, bytes).unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let err = store.import(src.path()).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
    assert_eq!(count_dir(&root.path().join("blobs/sha256")), 0);
    assert_eq!(count_dir(&root.path().join("layers")), 0);
}

#[test]
fn unknown_format_is_reported() {
    let (dir, root) = (tmp(), tmp());
    let store = ImageStore::open(root.path()).unwrap();
    let file = dir.path().join("junk");
    fs::write(&file, vec![7u8; 4096]).unwrap();
    assert!(matches!(store.import(&file), Err(Error::UnknownFormat(_))));
    assert!(matches!(
        store.import(dir.path()),
        Err(Error::UnknownFormat(_))
    ));
}

/// Imports a single-layer image made of `entries` and returns the result.
fn import_layer(root: &Path, entries: &[E<'_>]) -> Result<(ImageStore, Vec<PathBuf>), Error> {
    let src = tmp();
    add_oci_image(
        src.path(),
        &[layer_tar(entries)],
        Compress::None,
        &[("io.containerd.image.name", "t")],
        "t",
    );
    let store = ImageStore::open(root).unwrap();
    let images = store.import(src.path())?;
    let dirs = store.layer_dirs(&images[0]).unwrap();
    Ok((store, dirs))
}

fn assert_unsafe(result: Result<(ImageStore, Vec<PathBuf>), Error>) {
    match result {
        Err(Error::Unpack {
            source: UnpackError::UnsafePath { .. },
            ..
        }) => {}
        Err(other) => panic!("expected UnsafePath, got {other}"),
        Ok(_) => panic!("expected UnsafePath, import succeeded"),
    }
}

#[test]
fn parent_dir_entries_are_rejected() {
    let root = tmp();
    let outside = root.path().join("layers/evil");
    assert_unsafe(import_layer(
        root.path(),
        &[E::File("../evil", b"x", 0o644)],
    ));
    assert_unsafe(import_layer(
        root.path(),
        &[E::File("a/../../evil", b"x", 0o644)],
    ));
    assert!(!outside.exists());
    assert!(!root.path().join("evil").exists());
    assert_eq!(
        count_dir(&root.path().join("layers")),
        0,
        "no partial layer left"
    );
}

#[test]
fn absolute_entries_are_contained() {
    let root = tmp();
    let (_, dirs) = import_layer(root.path(), &[E::File("/abs/file", b"x", 0o644)]).unwrap();
    assert_eq!(fs::read(dirs[0].join("abs/file")).unwrap(), b"x");
    assert!(!Path::new("/abs/file").exists());
}

#[test]
fn writes_through_symlinks_are_rejected() {
    let root = tmp();
    let victim = tmp();
    let target = victim.path().to_str().unwrap();
    // Absolute symlink out of the layer, then a file through it.
    assert_unsafe(import_layer(
        root.path(),
        &[
            E::Symlink("link", target),
            E::File("link/pwned", b"x", 0o644),
        ],
    ));
    // Relative escape.
    assert_unsafe(import_layer(
        root.path(),
        &[
            E::Symlink("up", "../../../../../../.."),
            E::File("up/tmp/pwned", b"x", 0o644),
        ],
    ));
    // A symlink then a regular file of the same name replaces the link, never follows it.
    let (_, dirs) = import_layer(
        root.path(),
        &[
            E::Symlink("f", &format!("{target}/pwned")),
            E::File("f", b"inside", 0o644),
        ],
    )
    .unwrap();
    assert_eq!(fs::read(dirs[0].join("f")).unwrap(), b"inside");
    assert!(
        !fs::symlink_metadata(dirs[0].join("f"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(count_dir(victim.path()), 0);
}

#[test]
fn hard_links_must_stay_inside() {
    let root = tmp();
    assert_unsafe(import_layer(
        root.path(),
        &[E::Hardlink("passwd", "../../../../etc/passwd")],
    ));
    // Absolute target means the layer's own /etc/passwd, which this layer lacks.
    assert_unsafe(import_layer(
        root.path(),
        &[E::Hardlink("passwd", "/etc/passwd")],
    ));
    // Through a symlinked directory.
    let outside = tmp();
    fs::write(outside.path().join("secret"), b"s").unwrap();
    assert_unsafe(import_layer(
        root.path(),
        &[
            E::Symlink("d", outside.path().to_str().unwrap()),
            E::Hardlink("x", "d/secret"),
        ],
    ));
}

#[test]
fn device_nodes_are_skipped() {
    let root = tmp();
    let (_, dirs) = import_layer(
        root.path(),
        &[E::CharDev("dev/mem"), E::File("ok", b"", 0o644)],
    )
    .unwrap();
    assert!(!dirs[0].join("dev/mem").exists());
    assert!(dirs[0].join("ok").exists());
}

#[test]
#[ignore = "needs root"]
fn whiteouts_become_overlay_whiteouts() {
    testkit::require_root();
    let root = tmp();
    let upper = layer_tar(&[
        E::Dir("etc/", 0o755),
        E::File("etc/.wh.passwd", b"", 0o644),
        E::Dir("srv/", 0o755),
        E::File("srv/.wh..wh..opq", b"", 0o644),
        E::File("srv/new", b"n", 0o644),
        E::File("gone/.wh..wh.plnk", b"", 0o644),
        E::Owned("bin/suid", b"x", 0o4755, 1000, 1001),
    ]);
    let src = tmp();
    add_oci_image(
        src.path(),
        &[base_layer(), upper],
        Compress::Gzip,
        &[("io.containerd.image.name", "w")],
        "w",
    );
    let store = ImageStore::open(root.path()).unwrap();
    let image = store.import(src.path()).unwrap().remove(0);
    let dirs = store.layer_dirs(&image).unwrap();
    let top = &dirs[1];
    let wh = fs::symlink_metadata(top.join("etc/passwd")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!top.join("etc/.wh.passwd").exists());
    assert_eq!(
        crate::sys::lgetxattr(&top.join("srv"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(!top.join("srv/.wh..wh..opq").exists());
    assert_eq!(fs::read(top.join("srv/new")).unwrap(), b"n");
    assert!(!top.join("gone/.wh..wh.plnk").exists());
    let suid = fs::metadata(top.join("bin/suid")).unwrap();
    assert_eq!((suid.uid(), suid.gid()), (1000, 1001));
    assert_eq!(
        suid.permissions().mode() & 0o7777,
        0o4755,
        "set-uid survives chown"
    );
    // The base layer keeps the original.
    assert!(dirs[0].join("etc/passwd").is_file());
}

#[test]
#[ignore = "needs root"]
fn overlay_xattrs_from_archive_are_dropped() {
    testkit::require_root();
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_pax_extensions([
            ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
            ("SCHILY.xattr.user.note", &b"kept"[..]),
        ])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    builder.append_data(&mut h, "d/", &b""[..]).unwrap();
    let layer = builder.into_inner().unwrap();
    let (src, root) = (tmp(), tmp());
    add_oci_image(
        src.path(),
        &[layer],
        Compress::None,
        &[("io.containerd.image.name", "x")],
        "x",
    );
    let store = ImageStore::open(root.path()).unwrap();
    let image = store.import(src.path()).unwrap().remove(0);
    let d = store.layer_dirs(&image).unwrap()[0].join("d");
    assert_eq!(
        crate::sys::lgetxattr(&d, "trusted.overlay.redirect").unwrap(),
        None
    );
    // user.* xattrs may be unsupported on the test filesystem (tmpfs before 6.6).
    if let Ok(v) = crate::sys::lgetxattr(&d, "user.note") {
        assert!(v.is_none() || v.as_deref() == Some(&b"kept"[..]));
    }
}

#[test]
fn imports_build_test_image_script_output() {
    if !Path::new("/bin/busybox").exists() {
        eprintln!("skipped: /bin/busybox missing (apt-get install busybox-static)");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-image.sh");
    let (out, root) = (tmp(), tmp());
    let layout = out.path().join("layout");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(&layout)
        .status()
        .unwrap();
    assert!(status.success(), "build-test-image.sh failed");
    let store = ImageStore::open(root.path()).unwrap();
    let images = store.import(&layout).unwrap();
    assert_eq!(images.len(), 1);
    let image = &images[0];
    assert_eq!(image.names, ["skiff.test/busybox:latest"]);
    assert_eq!(image.config.cmd, ["/bin/sh"]);
    assert_eq!(image.config.working_dir, "/");
    let dirs = store.layer_dirs(image).unwrap();
    assert_eq!(dirs.len(), 1);
    assert!(dirs[0].join("bin/busybox").is_file());
    assert_eq!(
        fs::read_link(dirs[0].join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::metadata(dirs[0].join("tmp"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );
    assert!(dirs[0].join("var/www/index.html").is_file());
    // Same script, same digests.
    let again = out.path().join("again");
    assert!(
        std::process::Command::new("bash")
            .arg(&script)
            .arg(&again)
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(store.import(&again).unwrap()[0].id, image.id);
}

#[test]
fn store_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone>() {}
    check::<ImageStore>();
}

#[test]
fn imports_skopeo_archives() {
    let have = |tool: &str| {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !Path::new("/bin/busybox").exists() || !have("skopeo") {
        eprintln!("skipped: needs /bin/busybox and skopeo");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-image.sh");
    let (out, root) = (tmp(), tmp());
    let layout = out.path().join("layout");
    assert!(
        std::process::Command::new("bash")
            .arg(&script)
            .arg(&layout)
            .status()
            .unwrap()
            .success()
    );
    let docker = out.path().join("docker.tar");
    let oci = out.path().join("oci.tar");
    for dest in [
        format!("docker-archive:{}:skiff.test/other:v1", docker.display()),
        format!("oci-archive:{}:latest", oci.display()),
    ] {
        let ok = std::process::Command::new("skopeo")
            .args([
                "copy",
                "-q",
                &format!("oci:{}:latest", layout.display()),
                &dest,
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "skopeo copy to {dest}");
    }
    let store = ImageStore::open(root.path()).unwrap();
    let from_layout = store.import(&layout).unwrap().remove(0);
    // docker-archive: legacy manifest.json, uncompressed layers, RepoTags.
    let from_docker = store.import(&docker).unwrap().remove(0);
    assert_eq!(from_docker.id, from_layout.id);
    // Same image id: the RepoTag is added to the name it already had.
    assert_eq!(
        from_docker.names,
        ["skiff.test/busybox:latest", "skiff.test/other:v1"]
    );
    // oci-archive: only ref.name "latest".
    let from_oci = store.import(&oci).unwrap().remove(0);
    assert_eq!(from_oci.id, from_layout.id);
    assert!(
        from_oci
            .names
            .contains(&"localhost/import:latest".to_owned())
    );
    let dirs = store.layer_dirs(&from_oci).unwrap();
    assert!(dirs[0].join("bin/busybox").is_file());
}

#[test]
fn docker25_save_and_nested_index() {
    // Docker 25+ writes an OCI layout whose index entry may lack a name; manifest.json's
    // RepoTags then name the image. A multi-platform index nested in index.json is resolved to
    // this host's platform.
    let (src, root) = (tmp(), tmp());
    let config_id = add_oci_image(src.path(), &[base_layer()], Compress::Gzip, &[], "d");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(src.path().join("index.json")).unwrap()).unwrap();
    let mut manifest_desc = index["manifests"][0].clone();
    manifest_desc["platform"] =
        serde_json::json!({"architecture": crate::layout::host_arch(), "os": "linux"});
    let other = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", "e".repeat(64)),
        "size": 1,
        "platform": {"architecture": "s390x-not-here", "os": "linux"},
    });
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [other, manifest_desc],
    }))
    .unwrap();
    let (nested_digest, nested_size) = put(src.path(), &nested);
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": nested_digest,
        "size": nested_size,
    }]});
    fs::write(
        src.path().join("index.json"),
        serde_json::to_vec(&top).unwrap(),
    )
    .unwrap();
    let docker_manifest = serde_json::json!([{
        "Config": format!("blobs/sha256/{}", hex(&config_id)),
        "RepoTags": ["docker25:latest"],
        "Layers": [],
    }]);
    fs::write(
        src.path().join("manifest.json"),
        serde_json::to_vec(&docker_manifest).unwrap(),
    )
    .unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let images = store.import(src.path()).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].id, config_id);
    assert_eq!(images[0].names, ["docker.io/library/docker25:latest"]);
}

/// A truncated `images.json` (a disk that lost a write) must not make the store unusable:
/// `open` rebuilds the index from the manifests and configs in `blobs/` and saves it. The
/// images come back under their ids; their names were only in the index.
#[test]
fn corrupt_index_is_rebuilt_from_the_blobs() {
    let (src, root) = (tmp(), tmp());
    let id = add_oci_image(
        src.path(),
        &[base_layer(), top_layer("one")],
        Compress::Gzip,
        &[("io.containerd.image.name", "example.com/one:1")],
        "one",
    );
    let store = ImageStore::open(root.path()).unwrap();
    store.import(src.path()).unwrap();
    let before = store.resolve("example.com/one:1").unwrap().unwrap();
    let (n_blobs, n_layers) = (
        count_dir(&root.path().join("blobs/sha256")),
        count_dir(&root.path().join("layers")),
    );
    drop(store);
    let index = root.path().join("images.json");
    let text = fs::read(&index).unwrap();
    fs::write(&index, &text[..text.len() / 2]).unwrap();

    let store = ImageStore::open(root.path()).unwrap();
    let images = store.list().unwrap();
    assert_eq!(images.len(), 1, "{images:?}");
    let image = &images[0];
    assert_eq!(image.id, id);
    assert!(image.names.is_empty(), "names are lost with the index");
    assert_eq!(image.manifest_digest, before.manifest_digest);
    assert_eq!(image.diff_ids, before.diff_ids);
    assert_eq!(image.config, before.config);
    assert_eq!(store.resolve(&id).unwrap().unwrap().id, id);
    for dir in store.layer_dirs(image).unwrap() {
        assert!(dir.is_dir());
    }
    // Saved, and nothing of the image collected as garbage meanwhile.
    let saved: serde_json::Value = serde_json::from_slice(&fs::read(&index).unwrap()).unwrap();
    assert_eq!(saved["images"].as_array().unwrap().len(), 1);
    assert_eq!(count_dir(&root.path().join("blobs/sha256")), n_blobs);
    assert_eq!(count_dir(&root.path().join("layers")), n_layers);
    // Importing again names it again.
    store.import(src.path()).unwrap();
    assert_eq!(store.resolve("example.com/one:1").unwrap().unwrap().id, id);
}

/// `skiff image import` of a FIFO used to block a thread of skiffd in `open` forever (and the
/// store's lock with it); anything neither a directory nor a regular file is refused at once.
#[test]
fn fifo_and_devices_are_refused_without_blocking() {
    let (dir, root) = (tmp(), tmp());
    let store = ImageStore::open(root.path()).unwrap();
    let fifo = dir.path().join("image.tar");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let s = store.clone();
    std::thread::spawn(move || {
        let _ = tx.send(s.import(&fifo).map_err(|e| e.to_string()));
    });
    let err = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("import of a FIFO returns at once")
        .unwrap_err();
    assert!(err.contains("image.tar: cannot import a FIFO"), "{err}");
    match store.import(Path::new("/dev/zero")) {
        Err(e @ Error::NotImportable { .. }) => {
            assert!(e.to_string().contains("a character device"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // The store is still usable (its lock was not left held).
    assert!(store.list().unwrap().is_empty());
}
