"""The summary of benchmarks/gateway.py: one line per case and gateway against the goals (added
p50 <= 2 ms, throughput ratio >= 95%). A case measured several times (``--runs``) is judged on
the median of its runs, with the lowest and highest beside it: one quiet or one disturbed run
decides nothing."""

from __future__ import annotations

import statistics

Figures = dict[str, float]
ADDED_GOAL_MS = 2.0
RATIO_GOAL = 0.95


def _spread(values: list[float], text: str) -> str:
    if len(values) == 1:
        return ""
    return f" ({text.format(min(values))}..{text.format(max(values))})"


def summary(results: list[tuple[str, dict[str, Figures]]]) -> None:
    cases: dict[tuple[str, str], list[Figures]] = {}
    for label, per_gateway in results:
        for name, figures in per_gateway.items():
            cases.setdefault((label, name), []).append(figures)
    runs = max(len(measured) for measured in cases.values()) if cases else 0
    print(f"\nsummary ({runs} run{'s' if runs != 1 else ''} each; the median"
          f"{', lowest..highest' if runs > 1 else ''})")  # fmt: skip
    print(f"  {'case':38} {'added p50':>10}   {'ratio':>6}   {'cpu/call':>8}  goals")
    for (label, name), measured in cases.items():
        added = [figures["added_p50_ms"] for figures in measured]
        ratio = [figures["ratio"] for figures in measured]
        cpu = [figures["cpu_ms"] for figures in measured]
        met = statistics.median(added) <= ADDED_GOAL_MS and statistics.median(ratio) >= RATIO_GOAL
        tag = "" if name == "gateway" else " (compared)"
        print(f"  {label + tag:38} {statistics.median(added):+7.2f} ms"
              f"{_spread(added, '{:+.2f}')}  {statistics.median(ratio):6.1%}"
              f"{_spread(ratio, '{:.1%}')}  {statistics.median(cpu):5.2f} ms  "
              f"{'met' if met else 'NOT met'}")  # fmt: skip
