"""``appliance audit``: check the gateway's hash-chained audit log and read records from it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from appliance.cli.output import Output
from appliance.errors import AuditError
from appliance.gateway.audit_verify import find_record, last_records, verify_log
from appliance.gateway.config import DEFAULT_AUDIT_DIR

_DIR = click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_AUDIT_DIR,
    show_default=True,
    help="The gateway's audit directory (audit.dir in its config).",
)
_JSON = click.option("--json", "json_mode", is_flag=True, help="Same as `appliance --json`.")


@click.group("audit")
def audit_group() -> None:
    """Check and read the gateway's audit log (one hash-chained record per call)."""


@audit_group.command("verify")
@_DIR
@_JSON
@click.pass_obj
def verify_command(output: Output, directory: Path, json_mode: bool) -> None:
    """Check every record of the audit log, across rotated files.

    Recomputes each record's hash and checks that seq counts up and each
    record names the hash of the one before, then that the head file names
    the last record. Reports the first record modified, removed, reordered
    or cut off, with its file and line (exit code 34).

    \b
    Example:
      appliance audit verify --dir /var/log/appliance/audit
    """
    output.json_mode = output.json_mode or json_mode
    report = verify_log(directory)
    output.result(
        report.as_dict(),
        human=f"{directory}: audit log OK, {report.records} record(s) in {report.files} "
        f"file(s), seq 0..{report.last_seq}"
        + (f", {report.first_time} .. {report.last_time}" if report.records else ""),
    )


@audit_group.command("show")
@_DIR
@click.option("--last", "count", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--request-id", help="Only the record of this call (its X-Request-Id).")
@_JSON
@click.pass_obj
def show_command(
    output: Output, directory: Path, count: int, request_id: str | None, json_mode: bool
) -> None:
    """Print the newest records, or the one of a request id, as JSON lines.

    Does not verify the chain: run `appliance audit verify` for that.
    """
    output.json_mode = output.json_mode or json_mode
    if request_id is not None:
        record = find_record(directory, request_id)
        if record is None:
            raise AuditError(
                f"no record of request {request_id} in {directory}",
                hint="the id is the X-Request-Id header of the gateway's answer",
            )
        records = [record]
    else:
        records = last_records(directory, count)
    output.result(
        {"ok": True, "records": records},
        human="\n".join(json.dumps(r, sort_keys=True) for r in records),
    )
