#!/usr/bin/python
"""Ansible module: probe egress from the host and from inside each running runtime's own
context, every probe at once."""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: appliance_runtime_egress
short_description: Probe egress as each runtime process, from its network namespace
description:
  - Finds the running units that match the patterns, reads each one's main process, its user
    and group and its network namespace, and runs an HTTP probe to every target as that user,
    inside that namespace. A runtime that answers a probe could send prompts out.
  - Probes C(host_targets) from the host itself as well (as root, in the host's namespace).
  - Every probe runs at the same time. One that gets no answer (the good case) waits out its
    timeout, so the module takes about one timeout however many runtimes and targets.
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
  host_targets:
    description: URLs probed from the host itself; none by default.
    type: list
    elements: str
    default: []
  timeout:
    description: Seconds before a probe counts as no answer.
    type: int
    default: 3
requirements:
  - systemd (systemctl), and setpriv and nsenter from util-linux, on the host.
notes:
  - Must run as root, to take each runtime's user and enter its network namespace.
author: appliance maintainers
"""

EXAMPLES = r"""
- name: Probe egress as each runtime process, from its network namespace
  appliance_runtime_egress:
    units: [appliance-llamacpp@*.service, appliance-vllm@*.service]
    targets: [http://198.19.255.10/]
    timeout: 3
  register: __verify_runtimes

- name: No runtime reaches a target
  ansible.builtin.assert:
    that: __verify_runtimes.runtimes | map(attribute='probes') | flatten
      | selectattr('reached', 'ne', false) | list | length == 0
    fail_msg: a runtime reached a target outside the boundary
"""

RETURN = r"""
host:
  description: One entry per host target, as in C(probes) below.
  returned: always
  type: list
  elements: dict
  sample: [{target: http://198.19.255.10/, reached: false, detail: no answer (timed out)}]
runtimes:
  description: One entry per running runtime unit, sorted by unit name.
  returned: always
  type: list
  elements: dict
  contains:
    unit:
      description: The systemd unit.
      type: str
      sample: appliance-llamacpp@tiny-llama.service
    pid:
      description: Its main process; 0 when it has none (then C(error) says so).
      type: int
      sample: 4242
    error:
      description: Why the unit could not be probed.
      returned: when the unit has no main process
      type: str
      sample: no main process
    uid:
      description: The user id the main process runs as, which the probes take.
      returned: when the unit has a main process
      type: int
      sample: 998
    gid:
      description: The group id the main process runs as, which the probes take.
      returned: when the unit has a main process
      type: int
      sample: 998
    netns:
      description: The process's network namespace (C(net:[inode])), or what the unit's
        settings say about it where the namespace link cannot be read.
      returned: when the unit has a main process
      type: str
      sample: "net:[4026532564]"
    shares_host_netns:
      description: Whether the process uses the host's network namespace.
      returned: when the unit has a main process
      type: bool
      sample: true
    probes:
      description: One per target. C(reached) is true when the target answered, false when
        it did not, null when the probe itself could not run (any exit but the probe's own
        answer or no answer); C(detail) is its last line.
      type: list
      elements: dict
      sample: [{target: http://198.19.255.10/, reached: false, detail: no answer (timed out)}]
"""

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
NO_ANSWER = 3  # PROBE's exit when the target did not answer


def _show(unit: str) -> dict[str, str]:
    # systemctl from the host's PATH, as Ansible runs every module; argv only, no shell.
    out = subprocess.run(  # noqa: S603
        ["systemctl", "show", "-p", "MainPID", "-p", "PrivateNetwork", "-p",  # noqa: S607
         "NetworkNamespacePath", unit],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _ids(pid: int) -> tuple[int | None, int | None]:
    uid = gid = None
    with open(f"/proc/{pid:d}/status") as handle:
        for line in handle:
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
            elif line.startswith("Gid:"):
                gid = int(line.split()[1])
    return uid, gid


def _probe(
    pid: int, uid: int | None, gid: int | None, shared: bool, target: str, timeout: int
) -> dict[str, Any]:
    """``pid`` 0: from the host itself, as this module's user (root)."""
    command = ["python3", "-c", PROBE, target, str(timeout)]
    if pid:
        command = ["setpriv", f"--reuid={uid:d}", f"--regid={gid:d}", "--clear-groups", *command]
    if pid and not shared:
        command = ["nsenter", "--target", str(pid), "--net", "--", *command]
    # argv only, no shell; target is one argument of the probe script, never parsed by a shell.
    done = subprocess.run(  # noqa: S603
        command, capture_output=True, text=True, timeout=timeout + 10, check=False
    )
    detail = (done.stdout or done.stderr).strip().splitlines()
    # Only PROBE's own exits say what happened: 0 answered, 3 no answer. Any other (nsenter or
    # setpriv refused, python3 missing, the probe crashed or was killed) proves nothing: None.
    reached = {0: True, NO_ANSWER: False}.get(done.returncode)
    return {
        "target": target,
        "reached": reached,
        "detail": (detail[-1] if detail else "")
        + ("" if reached is not None else f" (the probe could not run: rc {done.returncode:d})"),
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "units": {"type": "list", "elements": "str", "required": True},
            "targets": {"type": "list", "elements": "str", "required": True},
            "host_targets": {"type": "list", "elements": "str", "default": []},
            "timeout": {"type": "int", "default": 3},
        },
        supports_check_mode=True,
    )
    listed = subprocess.run(  # noqa: S603 - argv only; systemctl from the host's PATH
        ["systemctl", "list-units", "--type=service", "--state=running", "--plain",  # noqa: S607
         "--no-legend", *module.params["units"]],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    host_net = os.readlink("/proc/1/ns/net")
    runtimes: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], int, int | None, int | None, bool]] = []
    for unit in sorted(line.split()[0] for line in listed.splitlines() if line.strip()):
        props = _show(unit)
        pid = int(props.get("MainPID", "0") or 0)
        if pid <= 0:
            runtimes.append({"unit": unit, "pid": 0, "probes": [], "error": "no main process"})
            continue
        uid, gid = _ids(pid)
        try:
            net = os.readlink(f"/proc/{pid:d}/ns/net")
            shared = net == host_net
        except PermissionError:
            # Without CAP_SYS_PTRACE (a container) root cannot read another user's namespace
            # link; the unit's own settings say whether systemd gave it a namespace of its own.
            shared = props.get("PrivateNetwork") == "no" and not props.get("NetworkNamespacePath")
            net = (
                f"{host_net if shared else 'unknown'} "
                f"(per the unit: PrivateNetwork={props.get('PrivateNetwork')})"
            )
        entry: dict[str, Any] = {"unit": unit, "pid": pid, "uid": uid, "gid": gid, "netns": net,
                                 "shares_host_netns": shared, "probes": []}  # fmt: skip
        pending.append((entry, pid, uid, gid, shared))
        runtimes.append(entry)
    # Every probe that gets no answer waits out its timeout: run them all at once, so verify
    # waits one timeout however many runtimes and targets there are.
    host: dict[str, Any] = {"probes": []}
    jobs = [(entry, target, pid, uid, gid, shared) for entry, pid, uid, gid, shared in pending
            for target in module.params["targets"]]  # fmt: skip
    jobs += [(host, target, 0, None, None, True) for target in module.params["host_targets"]]
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(jobs)))) as pool:
        futures = [
            pool.submit(_probe, pid, uid, gid, shared, target, module.params["timeout"])
            for _entry, target, pid, uid, gid, shared in jobs
        ]
        for (entry, target, *_), future in zip(jobs, futures, strict=True):
            try:
                entry["probes"].append(future.result())
            except (OSError, subprocess.SubprocessError) as exc:
                entry["probes"].append({"target": target, "reached": None, "detail": str(exc)})
    module.exit_json(changed=False, runtimes=runtimes, host=host["probes"])


if __name__ == "__main__":
    main()
