#!/usr/bin/env bash
# Benchmark: pull + unpack of a ~100 MB multi-layer image from a local registry, skiff against
# its peers (skopeo copy + umoci unpack), cold and warm, in one run.
#
# Usage: scripts/bench-pull.sh   (as root; installs docker-registry, skopeo, umoci if missing)
#
# The image is built from Debian files already on the machine (python, perl, i18n, zoneinfo),
# one gzip layer per directory, pushed to a throwaway `docker-registry` on a free loopback
# port. "cold" starts from an empty store/layout; "warm" repeats with everything cached (for
# skopeo + umoci, blobs are cached in the layout but umoci unpacks again, as a new container
# bundle needs). skiff's warm start for an IfNotPresent container is the store lookup, printed
# as resolve_us. Everything started here is stopped on exit.
set -euo pipefail

die() { echo "bench-pull: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "run as root (layers are unpacked with their owners)"
repo=$(cd "$(dirname "$0")/.." && pwd)

# shellcheck source=scripts/bench-lib.sh
source "$repo/scripts/bench-lib.sh"
bench_require docker-registry skopeo umoci python3

work=$(mktemp -d /var/tmp/skiff-bench.XXXXXX)
registry_pid=
cleanup() {
    if [[ -n $registry_pid ]]; then
        kill "$registry_pid" 2>/dev/null || true
        wait "$registry_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

(cd "$repo" && bench_profile && echo "building skiff's pull example ($PROFILE)..." &&
    cargo build -q "${CARGO_PROFILE[@]}" -p images --example pull)
pull_bin=$repo/target/${PROFILE:-release}/examples/pull

# --- image ------------------------------------------------------------------------------------
layout=$work/layout
mkdir -p "$layout/blobs/sha256"
put() { # FILE -> sets digest, size
    digest=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(stat -c %s "$1")
    mv "$1" "$layout/blobs/sha256/$digest"
}
layers_json= diff_ids=
total=0
for dir in usr/lib/python3.11 usr/share/perl usr/lib/x86_64-linux-gnu/perl usr/share/i18n usr/share/zoneinfo; do
    [[ -d /$dir ]] || continue
    tar -C / --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$work/layer.tar" "$dir"
    total=$((total + $(stat -c %s "$work/layer.tar")))
    diff_ids+="${diff_ids:+,}\"sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)\""
    gzip -n -6 "$work/layer.tar"
    put "$work/layer.tar.gz"
    layers_json+="${layers_json:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$digest\",\"size\":$size}"
done
[[ -n $layers_json ]] || die "none of the source directories exist"
printf '%s' "{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Cmd\":[\"/bin/sh\"]},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[$diff_ids]}}" >"$work/config.json"
put "$work/config.json"
config="{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$digest\",\"size\":$size}"
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":$config,\"layers\":[$layers_json]}" >"$work/manifest.json"
put "$work/manifest.json"
printf '%s' "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$digest\",\"size\":$size,\"annotations\":{\"org.opencontainers.image.ref.name\":\"latest\"}}]}" >"$layout/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
echo "image: $(grep -o '"size":[0-9]*' <<<"$layers_json" | wc -l) layers, $((total / 1048576)) MB uncompressed, $(du -sm "$layout" | cut -f1) MB compressed"

# --- registry ---------------------------------------------------------------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
ref=127.0.0.1:$port/bench/debian:latest
skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$layout:latest" "docker://$ref"

# --- skiff ------------------------------------------------------------------------------------
out=$("$pull_bin" --plain-http "$work/skiff" "$ref")
skiff_cold=$(awk '/^cold_ms/ {print $2}' <<<"$out")
skiff_warm=$(awk '/^warm_ms/ {print $2}' <<<"$out")
skiff_resolve=$(awk '/^resolve_us/ {print $2}' <<<"$out")

# --- skopeo + umoci ---------------------------------------------------------------------------
t0=$(now)
skopeo --insecure-policy copy -q --src-tls-verify=false "docker://$ref" "oci:$work/peer:latest"
umoci unpack --image "$work/peer:latest" "$work/bundle1" >/dev/null
t1=$(now)
skopeo --insecure-policy copy -q --src-tls-verify=false "docker://$ref" "oci:$work/peer:latest"
umoci unpack --image "$work/peer:latest" "$work/bundle2" >/dev/null
t2=$(now)
peer_cold=$(ms "$t0" "$t1")
peer_warm=$(ms "$t1" "$t2")

printf '\n%-28s %10s %10s\n' "" "cold (ms)" "warm (ms)"
printf '%-28s %10.0f %10.0f\n' "skiff pull+unpack" "$skiff_cold" "$skiff_warm"
printf '%-28s %10.0f %10.0f\n' "skopeo copy + umoci unpack" "$peer_cold" "$peer_warm"
echo "ratio peers/skiff: cold $(ratio "$peer_cold" "$skiff_cold")x, warm $(ratio "$peer_warm" "$skiff_warm")x"
printf 'skiff warm start (IfNotPresent: store lookup + layer dirs): %s us\n' "$skiff_resolve"
r_cold=$(ratio "$peer_cold" "$skiff_cold")
bench_result "cold pull + unpack of a 5-layer image (ms)" "$skiff_cold" "$peer_cold (skopeo + umoci)" \
    "${r_cold}x" "peer/skiff >= 1x" "$(met "$r_cold" '>=' 1)"
bench_result "warm start of a pulled image (ms)" "$skiff_warm" "$peer_warm (skopeo + umoci)" \
    "$(ratio "$peer_warm" "$skiff_warm")x" "-" "-"
