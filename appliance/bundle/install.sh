#!/bin/sh
# Install this appliance bundle on an isolated host that has only python3. Offline.
#
#   ./install.sh --pubkey KEY.pub [install options]
#
# 1. builds a venv for the installer from the bundle's own wheelhouse (no index, no network),
# 2. hands over to `appliance install` with the options given here, which verifies the bundle
#    (signature, layout, every file's digest, read once while it is copied) before any host
#    changes.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
venv="${APPLIANCE_VENV:-/opt/appliance/venv}"

fail() { printf 'Error: %s\n' "$1" >&2; [ -z "${2:-}" ] || printf 'Hint: %s\n' "$2" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 ||
  fail "python3 not found on this host" "install the OS's python3 package from the installation media"

wheelhouse=$(mktemp -d "${TMPDIR:-/tmp}/appliance-wheels.XXXXXX")
trap 'rm -rf "$wheelhouse"' EXIT

# The wheels are blobs named by digest; pip needs their real file names. The manifest knows
# them: link each installer wheel under its name (nothing is copied).
python3 - "$here" "$wheelhouse" <<'PY'
import json, os, sys
bundle, house = sys.argv[1], sys.argv[2]
with open(os.path.join(bundle, "manifest.json"), encoding="utf-8") as handle:
    manifest = json.load(handle)
wheels = [f for f in manifest["files"] if f["kind"] == "wheel" and f["component"].endswith(":installer")]
if not wheels:
    sys.exit("Error: this bundle carries no installer wheels")
for entry in wheels:
    os.symlink(os.path.join(bundle, entry["path"]), os.path.join(house, entry["name"]))
PY

if [ ! -x "$venv/bin/appliance" ]; then
  printf '==> creating the installer venv %s from the bundle (offline)\n' "$venv"
  # --without-pip: Debian's python3 has no ensurepip; pip runs from its own wheel instead.
  python3 -m venv --without-pip "$venv" ||
    fail "cannot create a venv at $venv" "set APPLIANCE_VENV to a writable directory"
  pip_wheel=$(ls "$wheelhouse"/pip-*.whl 2>/dev/null | head -n 1)
  [ -n "$pip_wheel" ] || fail "the bundle's wheelhouse has no pip wheel"
  "$venv/bin/python" "$pip_wheel/pip" install --quiet --no-index --find-links "$wheelhouse" \
    --disable-pip-version-check appliance pip ||
    fail "installing the installer from the bundle's wheelhouse failed" "see pip's message above"
fi

pubkey=""
for arg in "$@"; do
  case "$arg" in --pubkey|--pubkey=*) pubkey=yes ;; esac
done
[ -n "$pubkey" ] || fail "--pubkey is required" \
  "pass the publisher's public key, carried separately: ./install.sh --pubkey KEY.pub"

status=0
"$venv/bin/appliance" install --bundle "$here" "$@" || status=$?
case $status in
  0) ;;
  10|11|12) fail "the bundle did not verify; nothing was installed" ;;  # signature, content, layout
  *) exit "$status" ;;
esac
