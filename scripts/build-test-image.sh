#!/usr/bin/env bash
# Build a tiny busybox test image as an OCI image layout, without any container engine.
#
# Usage: scripts/build-test-image.sh OUT_DIR [NAME:TAG]
#
# The rootfs is Debian's static busybox plus a symlink per applet in /bin and a few files pods
# expect (/etc/passwd, /etc/hosts, /tmp, /var/www/index.html). The layer tar is deterministic
# (sorted, mtime 0, uid/gid 0, gzip without name/timestamp), so the same busybox always gives the
# same digests and re-running is idempotent. The index entry carries both the OCI convention
# `org.opencontainers.image.ref.name` = TAG and `io.containerd.image.name` = the full NAME:TAG.
set -euo pipefail

die() { echo "build-test-image: $*" >&2; exit 1; }

[[ $# -ge 1 && $# -le 2 ]] || die "usage: $0 OUT_DIR [NAME:TAG]"
out=$1
ref=${2:-skiff.test/busybox:latest}

# The tag is whatever follows the last ':' after the last '/' (a registry port is not a tag).
last=${ref##*/}
if [[ $last == *:* ]]; then
    tag=${last##*:}
else
    tag=latest
    ref=$ref:latest
fi

busybox=/bin/busybox
if [[ ! -x $busybox ]]; then
    command -v apt-get >/dev/null || die "$busybox missing and apt-get not available"
    apt-get install -y busybox-static >/dev/null || {
        apt-get update >/dev/null && apt-get install -y busybox-static >/dev/null
    } || die "could not install busybox-static"
fi
# Debian's `busybox` package (dynamic) also installs /bin/busybox; the rootfs needs a static one.
if command -v file >/dev/null && ! file -L "$busybox" | grep -q 'statically linked'; then
    die "$busybox is not statically linked (install busybox-static)"
fi

# Go's GOARCH names, which OCI configs use, from Debian's architecture names.
deb_arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
variant=
case $deb_arch in
    amd64) arch=amd64 ;;
    arm64) arch=arm64; variant=v8 ;;
    armhf) arch=arm; variant=v7 ;;
    armel) arch=arm; variant=v5 ;;
    i386) arch=386 ;;
    ppc64el) arch=ppc64le ;;
    s390x) arch=s390x ;;
    riscv64) arch=riscv64 ;;
    mips64el) arch=mips64le ;;
    loong64) arch=loong64 ;;
    *) die "unknown dpkg architecture $deb_arch" ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs

mkdir -p "$root"/{bin,etc,proc,sys,dev,tmp,root,var/www}
cp "$busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
done
for applet in sh sleep httpd nc cat echo ls env true false wget id hostname ps kill mkdir touch \
    date head tail; do
    [[ -L $root/bin/$applet ]] || die "busybox lacks applet $applet"
done

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
: >"$root/etc/hosts"
: >"$root/etc/resolv.conf"
echo '<html><body>skiff test image</body></html>' >"$root/var/www/index.html"

find "$root" -type d -exec chmod 0755 {} +
find "$root" -type f -exec chmod 0644 {} +
chmod 0755 "$root/bin/busybox"
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"

layer_tar=$work/layer.tar
(cd "$root" && LC_ALL=C ls -A | LC_ALL=C sort) >"$work/top"
LC_ALL=C tar -C "$root" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    --format=gnu -cf "$layer_tar" -T "$work/top"
diff_id=$(sha256sum "$layer_tar" | cut -d' ' -f1)
gzip -n -6 <"$layer_tar" >"$work/layer.tar.gz"

mkdir -p "$out/blobs/sha256"

# put FILE: store FILE as a blob; sets $digest and $size.
put() {
    digest=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(stat -c %s "$1")
    if [[ ! -f $out/blobs/sha256/$digest ]]; then
        cp "$1" "$out/blobs/sha256/.tmp-$digest"
        mv -f "$out/blobs/sha256/.tmp-$digest" "$out/blobs/sha256/$digest"
    fi
}

put "$work/layer.tar.gz"
layer_digest=$digest layer_size=$size

variant_json=
[[ -n $variant ]] && variant_json=",\"variant\":\"$variant\""
printf '%s' "{\"created\":\"1970-01-01T00:00:00Z\",\"architecture\":\"$arch\"$variant_json,\"os\":\"linux\",\"config\":{\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"],\"Cmd\":[\"/bin/sh\"],\"WorkingDir\":\"/\"},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff_id\"]},\"history\":[{\"created\":\"1970-01-01T00:00:00Z\",\"created_by\":\"scripts/build-test-image.sh\"}]}" >"$work/config.json"
put "$work/config.json"
config_digest=$digest config_size=$size

printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_digest\",\"size\":$config_size},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$layer_digest\",\"size\":$layer_size}]}" >"$work/manifest.json"
put "$work/manifest.json"

printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$digest\",\"size\":$size,\"platform\":{\"architecture\":\"$arch\",\"os\":\"linux\"$variant_json},\"annotations\":{\"io.containerd.image.name\":\"$ref\",\"org.opencontainers.image.ref.name\":\"$tag\"}}]}" >"$work/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"
mv -f "$work/index.json" "$out/index.json"

echo "$ref sha256:$digest"
