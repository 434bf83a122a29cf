"""``appliance audit``: check the gateway's hash-chained audit log and read records from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from appliance.cli.output import Output
from appliance.errors import AuditError
from appliance.gateway.audit_retention import ship
from appliance.gateway.audit_shipped import verify_shipped
from appliance.gateway.audit_verify import find_records, last_records, verify_log
from appliance.gateway.config import DEFAULT_AUDIT_DIR
from appliance.gateway.usage import parse_time, summarise

_DIR = click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_AUDIT_DIR,
    show_default=True,
    help="The gateway's audit directory (audit.dir in its config).",
)
HEX = set("0123456789abcdef")


@click.group("audit")
def audit_group() -> None:
    """Check and read the gateway's audit log (one hash-chained record per call)."""


def _anchor(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> Any:
    anchors = []
    for value in values:
        seq, _, digest = value.partition(":")
        if not seq.isdigit() or len(digest) != 64 or not all(c in HEX for c in digest):
            raise click.BadParameter(f"{value!r}: expected SEQ:HASH (the hash is 64 hex digits)")
        anchors.append((int(seq), digest))
    return tuple(anchors)


@audit_group.command("verify")
@_DIR
@click.option(
    "--anchor",
    "anchors",
    multiple=True,
    callback=_anchor,
    metavar="SEQ:HASH",
    help="A record's hash kept off the box (from an earlier audit.head or verify --json); "
    "a rewritten chain cannot match it. Repeat for several.",
)
@click.option(
    "--shipped",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Check a shipped copy instead: the file the site's syslog collector (or SIEM agent) "
    "wrote from appliance-audit-forward, one RFC 5424 message per line.",
)
@click.option("--host", help="With --shipped: the gateway host whose records to check.")
@click.pass_obj
def verify_command(
    output: Output,
    directory: Path,
    anchors: tuple[tuple[int, str], ...],
    shipped: Path | None,
    host: str | None,
) -> None:
    """Check every record of the audit log, across rotated files.

    Recomputes each record's hash and checks that seq counts up and each
    record names the hash of the one before, then that the head file names
    the last record. Reports the first record modified, removed, reordered
    or cut off, with its file and line (exit code 34).

    \b
    The chain has no secret: someone who can rewrite the whole log can
    recompute it. Copy audit.head (or last_seq:last_hash from --json) off
    the box now and then, and pass it back with --anchor to catch that.

    \b
    Examples:
      appliance audit verify --dir /var/log/appliance/audit
      appliance audit verify --anchor 1041:3f9c...e2 (from a copy kept elsewhere)
      appliance audit verify --shipped /var/log/remote/gw1/audit.log
    """
    if shipped is not None:
        if anchors:
            raise click.UsageError("--anchor checks the audit directory, not --shipped")
        copy = verify_shipped(shipped, host)
        output.result(
            copy.as_dict(),
            human=f"{shipped}: shipped audit copy OK, {copy.records} record(s) from host "
            f"{copy.host}, seq {copy.first_seq}..{copy.last_seq}"
            + (f", {copy.duplicates} duplicate(s) passed over" if copy.duplicates else "")
            + (f", {copy.other_lines} other line(s)" if copy.other_lines else "")
            + (
                f"\ncontent too long to ship, links checked, content on the appliance only: "
                f"seq {', '.join(map(str, copy.omitted))}"
                if copy.omitted
                else ""
            )
            + "".join(
                f"\nGAP: seq {gap['first_seq']}..{gap['last_seq']} missing (line {gap['line']})"
                for gap in copy.gaps
            ),
        )
        return
    report = verify_log(directory, anchors)
    output.result(
        report.as_dict(),
        human=f"{directory}: audit log OK, {report.records} record(s) in {report.files} "
        f"file(s), seq 0..{report.last_seq}"
        + (f", {report.first_time} .. {report.last_time}" if report.records else "")
        + (
            "\naudit.head has no check (an earlier release wrote it): accepted unchecked; the "
            "gateway writes it with one when it starts"
            if report.head_checked is False
            else ""
        )
        + (
            f"\nrecords through seq {report.pruned_through} were shipped and removed here"
            if report.pruned_through is not None
            else ""
        )
        + "".join(
            f"\nGAP: seq {gap['first_seq']}..{gap['last_seq']} missing ({gap['at']}): "
            f"{gap['reason']}"
            for gap in report.gaps
        )
        + "".join(
            f"\nforwarded to {target} through seq {seq} ({report.last_seq - seq} record(s) to go)"
            for target, seq in report.forwarded.items()
        ),
    )


@audit_group.command("ship")
@_DIR
@click.option(
    "--to",
    "target",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Where the copies go (a mount of the log host, removable media).",
)
@click.pass_obj
def ship_command(output: Output, directory: Path, target: Path) -> None:
    """Copy the rotated audit files off the box and mark them shipped.

    The copy gets its own audit.head and verifies on its own; only then is
    audit.shipped written. With audit.keep_rotated_bytes set in the gateway's
    config, the gateway removes shipped files (never others) to keep its disk
    free, and audit verify starts the chain where they end.

    \b
    Example:
      appliance audit ship --dir /var/log/appliance/audit --to /mnt/loghost/appliance
    """
    result = ship(directory, target)
    output.result(
        {"ok": True, **result},
        human=f"{directory}: {result['shipped']} file(s) copied to {target}"
        + (f", shipped through seq {result['seq']}" if result["seq"] is not None else ""),
    )


@audit_group.command("show")
@_DIR
@click.option("--last", "count", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--request-id",
    help="Only the records of this id: the gateway's X-Request-Id of a call, or the client's "
    "own id (every call that sent it as X-Client-Request-Id or X-Request-Id).",
)
@click.pass_obj
def show_command(output: Output, directory: Path, count: int, request_id: str | None) -> None:
    """Print the newest records, or those of a request id, as JSON lines.

    Does not verify the chain: run `appliance audit verify` for that.
    """
    if request_id is not None:
        records = find_records(directory, request_id)
        if not records:
            raise AuditError(
                f"no record of request {request_id} in {directory}",
                hint="give the X-Request-Id header of the gateway's answer, or the id the "
                "client sent as its own",
            )
    else:
        records = last_records(directory, count)
    output.result(
        {"ok": True, "records": records},
        human="\n".join(json.dumps(r, sort_keys=True) for r in records),
    )


def _moment(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@audit_group.command("usage")
@_DIR
@click.option(
    "--by", type=click.Choice(["key", "model"]), default="key", show_default=True,
    help="Group by API key id or by model.",
)  # fmt: skip
@click.option("--since", callback=_moment, help="From this time on: 2026-11-30, ...T14:00Z, 24h.")
@click.option("--until", callback=_moment, help="Before this time (same forms as --since).")
@click.pass_obj
def usage_command(output: Output, directory: Path, by: str, since: Any, until: Any) -> None:
    """Summarise calls, errors, tokens and latency from the audit log itself.

    Reads every file of the log still in the directory, rotated files
    included (or a shipped copy, with --dir). Errors are calls answered
    4xx or 5xx; latency is the gateway's, from request to last byte.
    Does not verify the chain: run `appliance audit verify` for that.

    \b
    Examples:
      appliance audit usage --by key --since 7d
      appliance audit usage --by model --since 2026-11-01 --until 2026-12-01 --json
    """
    from rich import box
    from rich.table import Table

    document = summarise(directory, by, since, until)  # type: ignore[arg-type]
    if output.json_mode:
        output.result(document)
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    headers = (by, "calls", "errors", "prompt tok", "completion tok", "p50 ms", "p95 ms")
    for header in headers:
        table.add_column(header, justify="left" if header == by else "right")
    for row in [*document["groups"], document["total"]]:
        table.add_row(
            _printable(row["name"]), str(row["calls"]), str(row["errors"]),
            str(row["prompt_tokens"]),
            str(row["completion_tokens"]), _number(row["latency_ms_p50"]),
            _number(row["latency_ms_p95"]),
        )  # fmt: skip
    window = f"{document['since'] or 'the first record'} .. {document['until'] or 'now'}"
    output.info(
        f"{directory}: seq {document['first_seq']}..{document['last_seq']} in "
        f"{document['files']} file(s), calls from {window}"
    )
    if output.verbosity >= 0:
        output.console.print(table)


def _printable(name: str) -> str:
    """A group's name as the table shows it: model names come from clients, and an escape
    sequence in one must not reach the operator's terminal."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in name)
