#!/usr/bin/env bash
# Prepare this machine for appliance's tests: a fresh Debian 12 machine, as root.
#
#   1. Debian packages the tests use (Docker engine, skopeo, a registry, debootstrap, ...)
#   2. dockerd, started if it is not running (there may be no systemd on the machine)
#   3. .venv with the pinned Python dependencies (requirements/constraints.txt)
#   4. the community.docker and ansible.posix collections, offline, from a hash-pinned wheel
#   5. the systemd test-host image (tests/harness/test-host-image.sh)
#   6. Node.js and the openai SDK for Node, by its package-lock.json (tests/clients/node: the
#      gateway's second real client)
#
# Idempotent: a second run changes nothing and takes seconds. Writes .cache/harness.env, which
# tests/run and the molecule scenarios read. The Debian mirror is $DEBIAN_MIRROR when set, else
# the one this machine's apt sources use.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE="${APPLIANCE_CACHE:-$ROOT/.cache}"
VENV="${APPLIANCE_TEST_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'Error: %s\n' "$1" >&2; [ -n "${2:-}" ] && printf 'Hint: %s\n' "$2" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "the harness needs root (apt, dockerd, debootstrap)" "run: sudo $0"
[ -r /etc/debian_version ] || die "the harness supports Debian 12 only" "run it on a Debian 12 machine or VM"
mkdir -p "$CACHE"
# The Debian mirror the test specs and the test-host image use: $DEBIAN_MIRROR, or this
# machine's own apt source for Debian bookworm main (tests/fixtures/debian_mirror.py).
DEBIAN_MIRROR=$("$PYTHON" "$ROOT/tests/fixtures/debian_mirror.py") || exit 1
export DEBIAN_MIRROR

# --- 1. Debian packages -------------------------------------------------------------------
PACKAGES=(docker.io skopeo docker-registry debootstrap apt-utils nftables iproute2
          openssh-client python3-venv gnupg unzip ca-certificates curl)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  step "Debian packages: all ${#PACKAGES[@]} present"
fi

# --- 2. dockerd ---------------------------------------------------------------------------
if docker info >/dev/null 2>&1; then
  step "dockerd: running"
else
  step "starting dockerd"
  if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
    systemctl start docker
  else
    nohup dockerd >/var/log/dockerd.log 2>&1 &
  fi
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || die "dockerd did not start within 60 s" "see /var/log/dockerd.log"
fi

# --- 3. Python venv -----------------------------------------------------------------------
lock="$ROOT/requirements/constraints.txt"
stamp="$VENV/.appliance-stamp"
want=$(cat "$lock" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  step "venv: $VENV up to date"
else
  step "creating venv $VENV from $lock"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -c "$lock" -e "$ROOT[dev]" 2>&1 \
    | { grep -v "^WARNING: Location 'file:" || true; }
  echo "$want" >"$stamp"
fi

# --- 4. Ansible collections, offline ------------------------------------------------------
collections="$CACHE/collections"
if [ -f "$collections/ansible_collections/community/docker/MANIFEST.json" ] \
   && [ -f "$collections/ansible_collections/ansible/posix/MANIFEST.json" ]; then
  step "collections: community.docker, ansible.posix present"
else
  step "unpacking community.docker and ansible.posix from the hash-pinned ansible wheel"
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --require-hashes \
    -r "$ROOT/requirements/collections.txt" -d "$CACHE/wheels" 2>&1 \
    | { grep -v "^WARNING: Location 'file:" || true; }
  rm -rf "$collections.tmp" && mkdir -p "$collections.tmp"
  unzip -q "$CACHE"/wheels/ansible-*.whl 'ansible_collections/community/docker/*' \
    'ansible_collections/ansible/posix/*' -d "$collections.tmp"
  rm -rf "$collections" && mv "$collections.tmp" "$collections"
fi

# --- 5. systemd test-host image -----------------------------------------------------------
image=$(bash "$ROOT/tests/harness/test-host-image.sh")

# --- 6. Node.js and the openai SDK for Node -------------------------------------------------
# The machine's own Node.js when it has one, else Debian's; npm reads its own registry setting.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  step "installing Debian packages: nodejs npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 18 ] || die "Node.js $(node --version) is too old for the openai SDK" \
  "install Node.js 18 or later (Debian 12's nodejs package is 18)"
clients="$ROOT/tests/clients/node"
node_stamp="$clients/node_modules/.appliance-stamp"
node_want=$(sha256sum <"$clients/package-lock.json" | cut -c1-16)
if [ -f "$node_stamp" ] && [ "$(cat "$node_stamp")" = "$node_want" ]; then
  step "node client: $clients/node_modules up to date"
else
  step "installing the node client's packages by $clients/package-lock.json"
  # npm ci installs exactly the lockfile and checks each package against its integrity hash.
  (cd "$clients" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$node_want" >"$node_stamp"
fi

cat >"$CACHE/harness.env" <<ENV
APPLIANCE_TEST_IMAGE=$image
ANSIBLE_COLLECTIONS_PATH=$collections
APPLIANCE_TEST_VENV=$VENV
DEBIAN_MIRROR=$DEBIAN_MIRROR
ENV
step "harness ready: $CACHE/harness.env"
