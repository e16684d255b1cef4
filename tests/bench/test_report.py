"""bench/report.py: what several interleaved rounds are reduced to (the figures docs/performance.md quotes)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from report import Row, median_rows, ratios_table  # noqa: E402
from scenarios import LoadResult  # noqa: E402

pytestmark = pytest.mark.timeout(10)


def _row(target: str, round_no: int, rps: float, cpu: tuple[float, float] | None) -> Row:
    result = LoadResult(rps=rps, p50_us=1e6 / rps, p99_us=2e6 / rps, requests=int(rps), total_requests=int(rps),
                        errors=0, seconds=1.0)
    return Row("tinyrpc", target, 50, 1, result, cpu, 0.0, round_no)


def test_the_median_row_takes_each_figure_over_the_rounds_and_adds_the_counts():
    rows = [_row("metaproxy", 1, 100.0, (30.0, 10.0)), _row("metaproxy", 2, 300.0, (20.0, 12.0)),
            _row("metaproxy", 3, 200.0, (40.0, 11.0))]
    (median,) = median_rows(rows)
    assert median.round == 0
    assert median.result.rps == 200.0
    assert median.cpu_us == (30.0, 11.0)
    assert median.result.requests == 600


def test_ratios_pair_rows_of_the_same_round_and_show_their_median_and_range():
    rows = [_row("haproxy", 1, 1000.0, (2.0, 18.0)), _row("metaproxy", 1, 600.0, (30.0, 10.0)),
            _row("haproxy", 2, 500.0, (2.0, 18.0)), _row("metaproxy", 2, 200.0, (30.0, 10.0)),
            _row("haproxy", 3, 800.0, (2.0, 18.0)), _row("metaproxy", 3, 400.0, (30.0, 10.0))]
    table = ratios_table(rows)
    # rounds: 0.60, 0.40, 0.50 -> median 0.50; a ratio of medians would say 400/800 as well, but the
    # range shows the spread.
    assert "0.50× (0.40-0.60)" in table
    assert "2.00× (2.00-2.00)" in table  # CPU per request: 40 against 20 in each round


def test_one_round_prints_plain_ratios():
    rows = [_row("haproxy", 1, 1000.0, (2.0, 18.0)), _row("metaproxy", 1, 600.0, (30.0, 10.0))]
    table = ratios_table(rows)
    assert "0.60×" in table and "(" not in table.split("\n", 2)[2]
