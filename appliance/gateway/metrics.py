"""Prometheus metrics for the gateway, in the text exposition format, by hand (no client
library in the wheelhouse for a few counters).

By model, and by API key: a key's series are labelled with its id (``k-<8 hex>``, also in the
audit log), never its secret, and only for keys that authenticated, so a client cannot make up
labels; past ``MAX_KEYS`` ids (a keys file that large, or one rotated very often between
restarts) further keys are counted under ``key="other"``, so the page stays bounded. Who may
see the series by key is the caller's decision (status.py): an operator key or the metrics
token; anyone else gets the rest of the page and a comment saying so.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

# Seconds; the low buckets resolve the gateway's own overhead on fast answers.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

_PREFIX = "appliance_gateway"
MAX_KEYS = 1000
OTHER_KEYS = "other"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.tokens: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.backend_errors: defaultdict[str, int] = defaultdict(int)
        self.audit_records = 0
        self.audit_failures = 0
        self.slow_clients = 0
        self._buckets: defaultdict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self._sum: defaultdict[str, float] = defaultdict(float)
        self._count: defaultdict[str, int] = defaultdict(int)
        self.key_requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.key_tokens: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.key_seconds: defaultdict[str, float] = defaultdict(float)
        self._keys: set[str] = set()

    def observe(
        self,
        model: str,
        status: int,
        seconds: float,
        prompt: int | None,
        completion: int | None,
        key: str | None = None,
    ) -> None:
        if key is not None:
            self._observe_key(key, status, seconds, prompt, completion)
        self.requests[(model, status)] += 1
        index = bisect.bisect_left(BUCKETS, seconds)
        if index < len(BUCKETS):
            self._buckets[model][index] += 1
        self._sum[model] += seconds
        self._count[model] += 1
        if prompt:
            self.tokens[(model, "prompt")] += prompt
        if completion:
            self.tokens[(model, "completion")] += completion

    def _observe_key(
        self, key: str, status: int, seconds: float, prompt: int | None, completion: int | None
    ) -> None:
        if key not in self._keys:
            if len(self._keys) >= MAX_KEYS:
                key = OTHER_KEYS
            else:
                self._keys.add(key)
        self.key_requests[(key, status)] += 1
        self.key_seconds[key] += seconds
        if prompt:
            self.key_tokens[(key, "prompt")] += prompt
        if completion:
            self.key_tokens[(key, "completion")] += completion

    def _render_keys(self) -> list[str]:
        p = _PREFIX
        out = [
            f"# HELP {p}_key_requests_total Calls answered, by API key id and HTTP status.",
            f"# TYPE {p}_key_requests_total counter",
        ]
        for (key, status), count in sorted(self.key_requests.items()):
            out.append(f'{p}_key_requests_total{{key="{_label(key)}",status="{status}"}} {count}')
        out += [
            f"# HELP {p}_key_request_seconds_total Time spent answering, by API key id.",
            f"# TYPE {p}_key_request_seconds_total counter",
        ]
        for key, seconds in sorted(self.key_seconds.items()):
            out.append(f'{p}_key_request_seconds_total{{key="{_label(key)}"}} {seconds:.6f}')
        out += [
            f"# HELP {p}_key_tokens_total Tokens the backends reported, by API key id and kind.",
            f"# TYPE {p}_key_tokens_total counter",
        ]
        for (key, kind), count in sorted(self.key_tokens.items()):
            out.append(f'{p}_key_tokens_total{{key="{_label(key)}",kind="{kind}"}} {count}')
        return out

    def render(
        self,
        gauges: list[tuple[str, str, str, int]] = (),  # type: ignore[assignment]
        *,
        by_key: bool = False,
    ) -> str:
        """The page; ``gauges`` are (name, help, type, value) the caller reads off live parts;
        the series by key only with ``by_key``."""
        p = _PREFIX
        out = [
            f"# HELP {p}_requests_total Calls answered, by model and HTTP status.",
            f"# TYPE {p}_requests_total counter",
        ]
        for (model, status), count in sorted(self.requests.items()):
            out.append(f'{p}_requests_total{{model="{_label(model)}",status="{status}"}} {count}')
        out += [
            f"# HELP {p}_request_duration_seconds Time from request to last byte sent.",
            f"# TYPE {p}_request_duration_seconds histogram",
        ]
        for model in sorted(self._count):
            label = f'model="{_label(model)}"'
            running = 0
            for bound, count in zip(BUCKETS, self._buckets[model], strict=True):
                running += count
                out.append(f'{p}_request_duration_seconds_bucket{{{label},le="{bound}"}} {running}')
            out.append(
                f'{p}_request_duration_seconds_bucket{{{label},le="+Inf"}} {self._count[model]}'
            )
            out.append(f"{p}_request_duration_seconds_sum{{{label}}} {self._sum[model]:.6f}")
            out.append(f"{p}_request_duration_seconds_count{{{label}}} {self._count[model]}")
        out += [
            f"# HELP {p}_tokens_total Tokens the backends reported, by model and kind.",
            f"# TYPE {p}_tokens_total counter",
        ]
        for (model, kind), count in sorted(self.tokens.items()):
            out.append(f'{p}_tokens_total{{model="{_label(model)}",kind="{kind}"}} {count}')
        out += [
            f"# HELP {p}_backend_errors_total Backend unreachable, failed or cut off mid-answer.",
            f"# TYPE {p}_backend_errors_total counter",
        ]
        for model, count in sorted(self.backend_errors.items()):
            out.append(f'{p}_backend_errors_total{{model="{_label(model)}"}} {count}')
        out += [
            f"# HELP {p}_audit_records_total Audit records written.",
            f"# TYPE {p}_audit_records_total counter",
            f"{p}_audit_records_total {self.audit_records}",
            f"# HELP {p}_audit_failures_total Audit writes that failed (503 while it lasts).",
            f"# TYPE {p}_audit_failures_total counter",
            f"{p}_audit_failures_total {self.audit_failures}",
            *(
                self._render_keys()
                if by_key
                else ["# Series by API key: scrape with an operator key or the metrics token."]
            ),
        ]
        for name, text, kind, value in gauges:
            out += [f"# HELP {p}_{name} {text}", f"# TYPE {p}_{name} {kind}", f"{p}_{name} {value}"]
        return "\n".join(out) + "\n"
