"""Tables of benchmark results, printed as Markdown so they paste into docs/performance.md as they are."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from scenarios import LoadResult


@dataclass(frozen=True)
class Row:
    scenario: str
    target: str
    connections: int
    depth: int
    result: LoadResult
    cpu_us: tuple[float, float] | None  # (user, system) µs per request; None for the direct baseline
    foreign_cores: float = 0.0  # CPU used by processes outside the benchmark meanwhile, in cores

    @property
    def cpu_us_per_request(self) -> float | None:
        return None if self.cpu_us is None else self.cpu_us[0] + self.cpu_us[1]

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(data.pop("result"))
        cpu = data.pop("cpu_us")
        data["cpu_user_us_per_request"] = None if cpu is None else cpu[0]
        data["cpu_sys_us_per_request"] = None if cpu is None else cpu[1]
        data["cpu_us_per_request"] = self.cpu_us_per_request
        return data


def _table(header: list[str], rows: Iterable[list[str]], left: int = 2) -> str:
    """A Markdown table; the first ``left`` columns are text (left-aligned), the rest numbers."""
    rows = list(rows)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    cols = list(enumerate(widths))

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells[i].ljust(w) if i < left else cells[i].rjust(w) for i, w in cols) + " |"

    sep = "|" + "|".join("-" * (w + 2) if i < left else "-" * (w + 1) + ":" for i, w in cols) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def results_table(rows: list[Row]) -> str:
    header = ["scenario", "path", "conns", "depth", "req/s", "p50 µs", "p99 µs", "proxy CPU µs/req",
              "of which user / sys", "other load (cores)"]
    return _table(header, ([
        r.scenario, r.target, str(r.connections), str(r.depth), f"{r.result.rps:,.0f}",
        f"{r.result.p50_us:.1f}", f"{r.result.p99_us:.1f}",
        "-" if r.cpu_us is None else f"{r.cpu_us[0] + r.cpu_us[1]:.1f}",
        "-" if r.cpu_us is None else f"{r.cpu_us[0]:.1f} / {r.cpu_us[1]:.1f}", f"{r.foreign_cores:.2f}",
    ] for r in rows))


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}×"


#: Which metaproxy row is compared with which HAProxy row: one process with one thread, and two
#: processes with two threads (each free to use both cores).
PAIRS = (("metaproxy", "haproxy"), ("metaproxy-2w", "haproxy-2t"))


def ratios_table(rows: list[Row], pairs: tuple[tuple[str, str], ...] = PAIRS) -> str:
    """metaproxy against direct and against HAProxy (its pair), per scenario and connection count."""
    by_key = {(r.scenario, r.connections, r.depth, r.target): r for r in rows}
    out = []
    for subject, yardstick in pairs:
        for (scenario, conns, depth, target), row in by_key.items():
            if target != subject:
                continue
            direct = by_key.get((scenario, conns, depth, "direct"))
            haproxy = by_key.get((scenario, conns, depth, yardstick))

            def get(r: Row | None, field: str) -> float | None:
                return None if r is None else getattr(r.result, field)

            out.append([
                scenario, f"{subject} / {yardstick}", str(conns), str(depth),
                _ratio(row.result.rps, get(direct, "rps")), _ratio(row.result.rps, get(haproxy, "rps")),
                _ratio(row.result.p50_us, get(direct, "p50_us")), _ratio(row.result.p50_us, get(haproxy, "p50_us")),
                _ratio(row.cpu_us_per_request, None if haproxy is None else haproxy.cpu_us_per_request),
            ])
    header = ["scenario", "paths", "conns", "depth", "req/s vs direct", "req/s vs HAProxy", "p50 vs direct",
              "p50 vs HAProxy", "CPU/req vs HAProxy"]
    return _table(header, out, left=2)


@dataclass(frozen=True)
class IdleMemory:
    scenario: str
    target: str
    connections: int
    rss_before_kib: int
    rss_after_kib: int

    @property
    def kib_per_connection(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / max(1, self.connections)


def memory_table(items: list[IdleMemory]) -> str:
    header = ["scenario", "proxy", "idle conns", "RSS before MiB", "RSS after MiB", "KiB per idle conn"]
    return _table(header, ([
        m.scenario, m.target, str(m.connections), f"{m.rss_before_kib / 1024:.1f}",
        f"{m.rss_after_kib / 1024:.1f}", f"{m.kib_per_connection:.1f}",
    ] for m in items))
