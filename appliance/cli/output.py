"""How appliance talks to people and to programs.

Human output goes through a rich console on stdout; errors go to stderr. With ``--json`` every
command prints exactly one JSON document on stdout, success or failure, so automation can
parse it without scraping text.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.errors import ApplianceError

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class Output:
    json_mode: bool = False
    verbosity: int = 0  # -1 quiet, 0 normal, >0 verbose
    debug: bool = False

    # Made on first use: a --quiet or --json run that prints nothing never imports rich.
    @functools.cached_property
    def console(self) -> Console:
        from rich.console import Console

        return Console(highlight=False, soft_wrap=True, markup=False)

    @functools.cached_property
    def err_console(self) -> Console:
        from rich.console import Console

        return Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

    def apply_flags(
        self, json_mode: bool = False, verbose: int = 0, quiet: bool = False, debug: bool = False
    ) -> None:
        """Take global options from wherever on the command line they stand: each one only
        adds to what was set before it, and --quiet wins over -v."""
        self.json_mode = self.json_mode or json_mode
        self.debug = self.debug or debug
        if quiet:
            self.verbosity = -1
        elif self.verbosity >= 0:
            self.verbosity += verbose

    def info(self, message: str) -> None:
        """A line for people; silent under --json and --quiet."""
        if not self.json_mode and self.verbosity >= 0:
            self.console.print(message)

    def detail(self, message: str) -> None:
        """A line shown only with -v."""
        if not self.json_mode and self.verbosity > 0:
            self.console.print(message)

    def warning(self, message: str) -> None:
        """Something people must know though the command succeeded: on stderr, even with
        --quiet (--json documents carry their warnings too)."""
        sys.stderr.write(f"Warning: {message}\n")

    def result(self, document: dict[str, Any], human: str | None = None) -> None:
        """The outcome of a command: a JSON document under --json, else ``human``."""
        if self.json_mode:
            sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
        elif human is not None and self.verbosity >= 0:
            self.console.print(human)

    def error(self, error: ApplianceError) -> None:
        """The one place errors are rendered."""
        if self.json_mode:
            sys.stdout.write(json.dumps({"ok": False, "error": error.as_dict()}, indent=2) + "\n")
        lines = [f"Error: {error.message}"]
        lines += [f"  {problem.render()}" for problem in error.problems]
        if error.hint:
            lines.append(f"Hint: {error.hint}")
        for line in lines:
            self.err_console.print(line, markup=False)


def human_bytes(count: int) -> str:
    """1536 -> '1.5 KiB': binary units, as disks and `ls -h` count."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
