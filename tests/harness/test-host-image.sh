#!/usr/bin/env bash
# Build the systemd test-host image: Debian 12 minbase + systemd + python3 + an SSH server (what
# an OS installer leaves on a server), no network configuration.
# Its tag is a digest of this file and the mirror, so the image is rebuilt only when the
# recipe changes. Prints the image name on stdout; progress goes to stderr.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE="${APPLIANCE_CACHE:-$ROOT/.cache}"
# $DEBIAN_MIRROR, or this machine's own apt source for Debian bookworm main.
MIRROR=$(python3 "$ROOT/tests/fixtures/debian_mirror.py") || exit 1
PACKAGES="systemd,systemd-sysv,python3,iproute2,openssh-server"

tag=$( { cat "${BASH_SOURCE[0]}"; echo "$MIRROR"; } | sha256sum | cut -c1-12)
image="appliance-test/debian12-systemd:$tag"

if docker image inspect "$image" >/dev/null 2>&1; then
  printf '==> test-host image: %s present\n' "$image" >&2
  echo "$image"
  exit 0
fi

printf '==> building test-host image %s (debootstrap, about a minute)\n' "$image" >&2
mkdir -p "$CACHE"
rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
if ! debootstrap --variant=minbase --include="$PACKAGES" bookworm "$rootfs" "$MIRROR" \
     >"$CACHE/debootstrap.log" 2>&1; then
  printf 'Error: debootstrap failed\nHint: see %s\n' "$CACHE/debootstrap.log" >&2
  exit 1
fi
# A test host has no network: no apt sources, so an accidental download fails loudly.
: >"$rootfs/etc/apt/sources.list"
rm -f "$rootfs"/etc/apt/sources.list.d/*
# Each container gets its own machine id at boot.
: >"$rootfs/etc/machine-id"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import -c 'CMD ["/lib/systemd/systemd"]' - "$image" >/dev/null
echo "$image"
