"""Tables of benchmark results, printed as Markdown so they paste into docs/performance.md as they are."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from statistics import median
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
    round: int = 1  # which round of ``bench/run.py --rounds`` (0: the median of the rounds)

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


def _key(r: Row) -> tuple[str, int, int, str]:
    return r.scenario, r.connections, r.depth, r.target


def median_rows(rows: list[Row]) -> list[Row]:
    """One row per (scenario, target, connections, depth): each figure the median of its rounds."""
    groups: dict[tuple[str, int, int, str], list[Row]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    out = []
    for group in groups.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        results = [r.result for r in group]
        result = replace(results[0], **{f: median(getattr(x, f) for x in results)
                                        for f in ("rps", "p50_us", "p99_us", "seconds")},
                         requests=sum(x.requests for x in results),
                         total_requests=sum(x.total_requests for x in results), errors=sum(x.errors for x in results))
        cpus = [r.cpu_us for r in group if r.cpu_us is not None]
        cpu = (median(c[0] for c in cpus), median(c[1] for c in cpus)) if cpus else None
        out.append(replace(group[0], result=result, cpu_us=cpu,
                           foreign_cores=median(r.foreign_cores for r in group), round=0))
    return out


def _figure(row: Row | None, field: str) -> float | None:
    if row is None:
        return None
    return row.cpu_us_per_request if field == "cpu_us_per_request" else getattr(row.result, field)


def _paired(rounds: dict[int, Row], other: dict[int, Row], field: str) -> list[tuple[float | None, float | None]]:
    """``field`` of each round's row beside the same round's row of ``other``."""
    return [(_figure(row, field), _figure(other.get(n), field)) for n, row in sorted(rounds.items())]


def _ratios(pairs: list[tuple[float | None, float | None]]) -> str:
    """One round: ``0.57×``; several: the median of the per-round ratios, with their range."""
    values = sorted(a / b for a, b in pairs if a is not None and b)
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}×"
    return f"{median(values):.2f}× ({values[0]:.2f}-{values[-1]:.2f})"


#: Which metaproxy row is compared with which HAProxy row: one process with one thread, and two
#: processes with two threads (each free to use both cores).
PAIRS = (("metaproxy", "haproxy"), ("metaproxy-py", "haproxy"), ("metaproxy-2w", "haproxy-2t"))


def ratios_table(rows: list[Row], pairs: tuple[tuple[str, str], ...] = PAIRS) -> str:
    """metaproxy against direct and against HAProxy (its pair), per scenario and connection count.

    With several rounds each ratio is taken within a round (the two measurements seconds apart)
    and the table shows the median of those ratios and their range.
    """
    by_key: dict[tuple[str, int, int, str], dict[int, Row]] = {}
    for r in rows:
        by_key.setdefault(_key(r), {})[r.round] = r
    out = []
    for subject, yardstick in pairs:
        for (scenario, conns, depth, target), rounds in by_key.items():
            if target != subject:
                continue
            direct = by_key.get((scenario, conns, depth, "direct"), {})
            haproxy = by_key.get((scenario, conns, depth, yardstick), {})

            out.append([
                scenario, f"{subject} / {yardstick}", str(conns), str(depth),
                _ratios(_paired(rounds, direct, "rps")), _ratios(_paired(rounds, haproxy, "rps")),
                _ratios(_paired(rounds, direct, "p50_us")), _ratios(_paired(rounds, haproxy, "p50_us")),
                _ratios(_paired(rounds, haproxy, "cpu_us_per_request")),
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
