#!/usr/bin/python
"""Ansible module: probe egress from inside each running runtime's own context."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: appliance_runtime_egress
short_description: Probe egress as each runtime process, from its network namespace
description:
  - Finds the running units that match the patterns, reads each one's main process, its user
    and group and its network namespace, and runs an HTTP probe to every target as that user,
    inside that namespace. A runtime that answers a probe could send prompts out.
  - Reads only; the probes are GET requests. Supports check mode.
options:
  units:
    description: systemd unit patterns of the runtimes (globs).
    type: list
    elements: str
    required: true
  targets:
    description: URLs outside the boundary that must not answer.
    type: list
    elements: str
    required: true
  timeout:
    description: Seconds before a probe counts as no answer.
    type: int
    default: 3
author: appliance maintainers
"""

RETURN = r"""
runtimes:
  description: One entry per running runtime unit.
  returned: always
  type: list
  elements: dict
"""

import os
import subprocess

from ansible.module_utils.basic import AnsibleModule

# Runs as the runtime's user: exit 0 and the status when the target answered, 3 when not.
PROBE = r"""
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as response:
        print("answered HTTP %d" % response.status); sys.exit(0)
except urllib.error.HTTPError as error:
    print("answered HTTP %d" % error.code); sys.exit(0)
except Exception as error:
    print("no answer (%s)" % (getattr(error, "reason", None) or error)); sys.exit(3)
"""


def _show(unit):
    out = subprocess.run(
        ["systemctl", "show", "-p", "MainPID", "-p", "PrivateNetwork", "-p",
         "NetworkNamespacePath", unit],
        capture_output=True, text=True, check=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _ids(pid):
    uid = gid = None
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
            elif line.startswith("Gid:"):
                gid = int(line.split()[1])
    return uid, gid


def _probe(pid, uid, gid, shared, target, timeout):
    command = ["setpriv", "--reuid=%d" % uid, "--regid=%d" % gid, "--clear-groups",
               "python3", "-c", PROBE, target, str(timeout)]
    if not shared:
        command = ["nsenter", "--target", str(pid), "--net", "--"] + command
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 10)
    detail = (done.stdout or done.stderr).strip().splitlines()
    return {
        "target": target,
        "reached": done.returncode == 0,
        "detail": detail[-1] if detail else "rc %d" % done.returncode,
    }


def main():
    module = AnsibleModule(
        argument_spec={
            "units": {"type": "list", "elements": "str", "required": True},
            "targets": {"type": "list", "elements": "str", "required": True},
            "timeout": {"type": "int", "default": 3},
        },
        supports_check_mode=True,
    )
    listed = subprocess.run(
        ["systemctl", "list-units", "--type=service", "--state=running", "--plain",
         "--no-legend"] + module.params["units"],
        capture_output=True, text=True, check=False,
    ).stdout
    host_net = os.readlink("/proc/1/ns/net")
    runtimes = []
    for unit in sorted(line.split()[0] for line in listed.splitlines() if line.strip()):
        props = _show(unit)
        pid = int(props.get("MainPID", "0") or 0)
        if pid <= 0:
            runtimes.append({"unit": unit, "pid": 0, "probes": [], "error": "no main process"})
            continue
        uid, gid = _ids(pid)
        try:
            net = os.readlink("/proc/%d/ns/net" % pid)
            shared = net == host_net
        except PermissionError:
            # Without CAP_SYS_PTRACE (a container) root cannot read another user's namespace
            # link; the unit's own settings say whether systemd gave it a namespace of its own.
            shared = props.get("PrivateNetwork") == "no" and not props.get("NetworkNamespacePath")
            net = "%s (per the unit: PrivateNetwork=%s)" % (
                host_net if shared else "unknown", props.get("PrivateNetwork"))
        entry = {"unit": unit, "pid": pid, "uid": uid, "gid": gid, "netns": net,
                 "shares_host_netns": shared, "probes": []}
        for target in module.params["targets"]:
            try:
                entry["probes"].append(
                    _probe(pid, uid, gid, shared, target, module.params["timeout"]))
            except (OSError, subprocess.SubprocessError) as exc:
                entry["probes"].append({"target": target, "reached": None, "detail": str(exc)})
        runtimes.append(entry)
    module.exit_json(changed=False, runtimes=runtimes)


if __name__ == "__main__":
    main()
