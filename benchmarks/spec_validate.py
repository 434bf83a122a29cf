"""How long spec validation takes, for the shipped spec and for a very large one.

Validation runs before every build; it must stay instant even for a spec with thousands of
artifacts. Prints figures and ratios; asserts nothing.

    .venv/bin/python benchmarks/spec_validate.py
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from appliance.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]
# production.yaml reads ${DEBIAN_MIRROR}; validation fetches nothing, so any URL measures the same.
ENVIRON = {"DEBIAN_MIRROR": "http://mirror.invalid/debian"}


def timed(text: str, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        parse_spec(text, environ=ENVIRON)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def large_spec(files: int) -> str:
    lines = ["version: 1", "name: big", "release: '1'", "targets: [{os: debian-12, arch: amd64}]"]
    lines.append("files:")
    for index in range(files):
        lines.append(
            f"  - {{name: f{index}, url: 'https://files.invalid/{index}', sha256: '{index:064x}'}}"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    production = (ROOT / "examples/production.yaml").read_text()
    small = timed(production, 50)
    print(f"production.yaml ({len(production)} bytes): {small * 1e3:.2f} ms median of 50")
    for count in (1000, 5000):
        text = large_spec(count)
        seconds = timed(text, 5)
        per_file = seconds / count * 1e6
        print(
            f"{count} files ({len(text) >> 10} KiB): {seconds * 1e3:.1f} ms median of 5, "
            f"{per_file:.1f} us per file, {seconds / small:.0f}x the production spec"
        )


if __name__ == "__main__":
    main()
