#!/usr/bin/env bash
# Prove the Dockerfile here, where no Docker engine runs: build a local Debian base image with
# debootstrap, build our Dockerfile on it with buildah (chroot isolation), run the image's
# entrypoint on the demo config against the in-process sandbox, and check what it wrote.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=localhost/braze-export-base:bookworm
IMAGE=localhost/braze-export:test
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# This machine caps open files and processes for containers below buildah's defaults.
ULIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
WORK=$(mktemp -d /tmp/container-test.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

need=()
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  echo "container-test: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
  echo "container-test: building the base image $BASE with debootstrap"
  rootfs="$WORK/rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  ctr=$(buildah from scratch)
  mnt=$(buildah mount "$ctr")
  cp -a "$rootfs"/. "$mnt"/
  buildah umount "$ctr" >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  buildah commit --quiet "$ctr" "$BASE" >/dev/null
  buildah rm "$ctr" >/dev/null
fi

echo "container-test: building $IMAGE from the Dockerfile"
# Where this machine reaches PyPI through a TLS-inspecting proxy, its CA is in the host's
# bundle only: lend that bundle to the build's RUN steps (it is not copied into the image).
cert_args=()
host_bundle=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
if [ -f "$host_bundle" ]; then
  cert_args=(-v "$host_bundle:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi
buildah bud --quiet --isolation=chroot "${ULIMITS[@]}" "${cert_args[@]}" \
  --build-arg PYTHON_IMAGE="$BASE" -t "$IMAGE" . >/dev/null

echo "container-test: running the entrypoint on the demo config"
out="$WORK/out"
mkdir -p "$out"
chown 10001 "$out"   # the image's non-root user writes here
ctr=$(buildah from "$IMAGE")
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
entrypoint=$(buildah inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$IMAGE")
user=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")
[ "$entrypoint" = '[braze-export]' ] || { echo "unexpected entrypoint $entrypoint"; exit 1; }
[ "$user" = "exporter" ] || { echo "image runs as '$user', not the non-root user"; exit 1; }
buildah run --isolation=chroot -v "$out:/data:rw" "$ctr" -- \
  braze-export run /opt/braze-export/configs/demo.yaml --sandbox --out /data --as-of 2024-07-01 \
  | tee "$WORK/summary.txt"
buildah run --isolation=chroot -v "$out:/data:rw" "$ctr" -- \
  braze-export verify /data

files=$(find "$out" -path "$out/_runs" -prune -o -path "$out/.braze-export" -prune -o -type f -name '*.jsonl' -print | wc -l)
owner=$(stat -c %u "$(find "$out/sessions" -type f | head -1)")
# The demo exports 4 series (sessions, events, dau, purchases_revenue): all of them complete.
grep -Eq "^series: [0-9]+ complete, 0 incomplete, 0 failed" "$WORK/summary.txt"
for series in sessions events dau purchases_revenue; do
  [ -d "$out/$series" ] || { echo "no $series files written"; exit 1; }
done
[ "$files" -gt 50 ] || { echo "only $files data files written"; exit 1; }
[ "$owner" = 10001 ] || { echo "files are owned by uid $owner, not the image's user"; exit 1; }
if buildah run --isolation=chroot "$ctr" -- sh -c 'command -v pytest ruff mypy' >/dev/null 2>&1; then
  echo "dev tools found in the image"; exit 1
fi
echo "container-test: ok ($files data files, written by uid $owner, checksums verified)"
