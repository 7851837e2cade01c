#!/bin/bash
# Build cluster/Dockerfile on a machine with no container daemon and no registry (the rehearsal of
# docs/deploy-image.md): podman/buildah from Debian, vfs storage, runc, and a stand-in for python:3.11-slim-bookworm
# made here with debootstrap plus a CPython built for bookworm (the official image's layout: Python in /usr/local).
#
#   sudo cluster/docker/rehearsal-build.sh            # CPU image localhost/rayml:0.1.0-cpu
#   PYTHON_PREFIX=/root/.pyenv/versions/3.11.7 ...     # where that CPython lives (any bookworm build of 3.11.x >= 3.11.3)
#   TORCH_WHEEL=/opt/wheels/torch-2.13.0+cpu-...whl    # the torch +cpu wheel when download.pytorch.org is unreachable
#   EXTRA_CA_DIR=/usr/local/share/ca-certificates      # CAs of a TLS-intercepting proxy, baked into the stand-in base
#
# On a machine with Docker and a registry none of this is needed: `docker build -f cluster/Dockerfile .`.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-/tmp/rayml-image}
PYTHON_PREFIX=${PYTHON_PREFIX:-/root/.pyenv/versions/3.11.7}
TORCH_WHEEL=${TORCH_WHEEL:-$(ls /opt/wheels/torch-2.13.0+cpu-cp311-*.whl 2>/dev/null | head -1)}
EXTRA_CA_DIR=${EXTRA_CA_DIR:-/usr/local/share/ca-certificates}
PY=$("$PYTHON_PREFIX/bin/python3" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
BASE=${BASE:-localhost/rayml-base:bookworm-py$PY}
IMAGE=${IMAGE:-localhost/rayml:0.1.0-cpu}
PODMAN=(podman --storage-driver vfs --runtime runc)
# This sandbox refuses rlimits at their hard limit (crun/runc setrlimit EPERM): ask for less.
ULIMITS=(--ulimit nofile=16384:16384 --ulimit nproc=4096:4096)

command -v podman >/dev/null && command -v debootstrap >/dev/null && command -v runc >/dev/null || {
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah debootstrap runc tini; }

if ! "${PODMAN[@]}" image exists "$BASE"; then
  rootfs=$WORK/rootfs
  rm -rf "$rootfs"
  # The official slim image's runtime libraries (what CPython's extension modules link), no Debian python3.
  debootstrap --variant=minbase \
    --include=ca-certificates,netbase,tzdata,libffi8,libsqlite3-0,libssl3,libbz2-1.0,liblzma5,libreadline8,libncursesw6,zlib1g,libuuid1,libexpat1,libnsl2,libtirpc3 \
    bookworm "$rootfs" http://deb.debian.org/debian
  mkdir -p "$rootfs/usr/local/bin" "$rootfs/usr/local/lib"
  cp -a "$PYTHON_PREFIX"/lib/libpython3*.so* "$rootfs/usr/local/lib/"
  (cd "$PYTHON_PREFIX/lib" && tar -c --exclude='python3.11/site-packages/*' --exclude=python3.11/test \
     --exclude=python3.11/idlelib --exclude=python3.11/tkinter --exclude=python3.11/turtledemo \
     --exclude=__pycache__ python3.11) | tar -C "$rootfs/usr/local/lib" -x
  cp -a "$PYTHON_PREFIX/bin/python3.11" "$rootfs/usr/local/bin/"
  ln -sf python3.11 "$rootfs/usr/local/bin/python3"
  ln -sf python3 "$rootfs/usr/local/bin/python"
  echo /usr/local/lib > "$rootfs/etc/ld.so.conf.d/usr-local.conf"
  chroot "$rootfs" ldconfig
  if compgen -G "$EXTRA_CA_DIR/*.crt" >/dev/null; then
    cp "$EXTRA_CA_DIR"/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "${PODMAN[@]}" import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' --change 'CMD ["python3"]' - "$BASE"
fi

torch_index=https://download.pytorch.org/whl/cpu
if [ -n "$TORCH_WHEEL" ]; then
  ln -f "$TORCH_WHEEL" "$REPO/cluster/docker/wheelhouse/" 2>/dev/null || cp "$TORCH_WHEEL" "$REPO/cluster/docker/wheelhouse/"
  torch_index=https://pypi.org/simple  # the wheel comes from the wheelhouse; an unreachable index only slows pip
fi

cd "$REPO"
"${PODMAN[@]}" build --format docker --pull=never --layers=false "${ULIMITS[@]}" -f cluster/Dockerfile \
  --build-arg PYTHON_IMAGE="$BASE" --build-arg TORCH_INDEX_URL="$torch_index" -t "$IMAGE" .
"${PODMAN[@]}" image inspect --format '{{.Id}} {{.Size}}' "$IMAGE"
