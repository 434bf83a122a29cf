#!/bin/sh
# Install this appliance bundle on an isolated host that has only python3. Offline.
#
#   ./install.sh --pubkey KEY.pub [install options]          first install (or the same again)
#   ./install.sh upgrade --pubkey KEY.pub [upgrade options]  from the running release: plan, apply
#
# 1. builds a venv for the installer from the bundle's own wheelhouse (no index, no network),
# 2. hands over to `appliance install` (or `appliance upgrade`) of this bundle's own installer,
#    with the options given here, which verifies the bundle (signature, layout, every file's
#    digest, read once while it is copied) before any host changes.
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
import hashlib, json, os, sys
bundle, house = sys.argv[1], sys.argv[2]
with open(os.path.join(bundle, "manifest.json"), encoding="utf-8") as handle:
    manifest = json.load(handle)
wheels = [f for f in manifest["files"] if f["kind"] == "wheel" and f["component"].endswith(":installer")]
if not wheels:
    sys.exit("Error: this bundle carries no installer wheels")
for entry in wheels:
    os.symlink(os.path.join(bundle, entry["path"]), os.path.join(house, entry["name"]))
# The installer's identity: its wheels' digests. A bundle with other wheels gets a venv of its own.
listing = "".join(sorted(f"{e['sha256']}  {e['name']}\n" for e in wheels))
with open(os.path.join(house, ".id"), "w", encoding="utf-8") as out:
    out.write(hashlib.sha256(listing.encode()).hexdigest()[:16])
PY

# One venv per installer: $venv links to venvs/<id>, the venv of this bundle's wheels. Reusing
# whatever venv an earlier release left would run that release's installer code on this
# bundle's Ansible content; a venv per wheel set also keeps the previous release's installer
# for going back.
id=$(cat "$wheelhouse/.id")
venvs="$(dirname "$venv")/venvs"
target="$venvs/$id"
mkdir -p "$venvs" || fail "cannot create $venvs" "set APPLIANCE_VENV to a writable directory"
# One run at a time builds or checks a venv: a second install.sh would otherwise remove the
# venv the first is building or running from. The descriptor (and the lock) lasts this run.
exec 9>"$venvs/.lock" && flock 9 ||
  fail "cannot lock $venvs/.lock" "set APPLIANCE_VENV to a writable directory"
# A venv's scripts name its directory, so it is built where it lives; .complete marks one that
# finished (a run killed halfway leaves none, and the next run starts that venv afresh).
if [ ! -f "$target/.complete" ]; then
  printf '==> creating the installer venv %s from the bundle (offline): %s\n' "$venv" "$target"
  rm -rf "$target"
  # --without-pip: Debian's python3 has no ensurepip; pip runs from its own wheel instead.
  python3 -m venv --without-pip "$target" ||
    fail "cannot create a venv at $target" "set APPLIANCE_VENV to a writable directory"
  pip_wheel=$(ls "$wheelhouse"/pip-*.whl 2>/dev/null | head -n 1)
  [ -n "$pip_wheel" ] || fail "the bundle's wheelhouse has no pip wheel"
  "$target/bin/python" "$pip_wheel/pip" install --quiet --no-index --find-links "$wheelhouse" \
    --disable-pip-version-check appliance pip ||
    fail "installing the installer from the bundle's wheelhouse failed" "see pip's message above"
  : >"$target/.complete"
fi
command=install
case "${1:-}" in upgrade) command=upgrade; shift ;; esac
pubkey=""
plan_only=""
for arg in "$@"; do
  case "$arg" in
    --pubkey|--pubkey=*) pubkey=yes ;;
    --plan-only) plan_only=yes ;;
  esac
done
[ -n "$pubkey" ] || fail "--pubkey is required" \
  "pass the publisher's public key, carried separately: ./install.sh --pubkey KEY.pub"

# A first install has no release to protect: $venv names this installer from the start, so
# an operator can run appliance from it after a run that failed.
if [ ! -e "$venv" ] && [ ! -L "$venv" ] && [ -z "$plan_only" ]; then
  mkdir -p "$(dirname "$venv")" && ln -s "venvs/$id" "$venv" ||
    fail "cannot point $venv at $target" "set APPLIANCE_VENV to a writable directory"
fi

# The installer names the link when a rollback points it back at another release's venv, and
# prune spares what the link names (appliance/install/venvs.py).
export APPLIANCE_VENV="$venv"
status=0
"$target/bin/appliance" "$command" --bundle "$here" "$@" || status=$?
case $status in
  0) ;;
  10|11|12) fail "the bundle did not verify; nothing was installed" ;;  # signature, content, layout
  *) exit "$status" ;;
esac
[ -z "$plan_only" ] || exit 0

# $venv names the installer of the release installed last (appliance verify, releases, models
# run from it): a link, swapped in one rename once this bundle's run succeeded, so a refused or
# failed run leaves it on the installer that matches the running release. A venv directory an
# older install.sh made there is moved out of the way first.
if [ -d "$venv" ] && [ ! -L "$venv" ]; then
  rm -rf "$venv.old" && mv "$venv" "$venv.old" && rm -rf "$venv.old"
fi
rm -f "$venv.new"
ln -s "venvs/$id" "$venv.new" && mv -T "$venv.new" "$venv" ||
  fail "cannot point $venv at $target" "set APPLIANCE_VENV to a writable directory"
