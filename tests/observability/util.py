"""Helpers of the observability tests: admin HTTP calls, polling, Prometheus samples."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from metaproxy.testing.harness import ProxyProcess, wait_until


def admin(proxy: ProxyProcess, path: str, method: str = "GET") -> tuple[int, str]:
    """(status, body) of one admin request; HTTP errors are answers too."""
    host, port = proxy.admin_address
    request = urllib.request.Request(f"http://{host}:{port}{path}", method=method,
                                     data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every Prometheus sample by (sample name, labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(values: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in values, f"no sample {name}{labels}; have {sorted(k[0] for k in values if k[0].startswith(name))}"
    return values[key]



def read_lines(path: Path, count: int, timeout: float = 10.0) -> list[str]:
    """The file's lines once it has at least ``count`` of them (the access log is flushed by a greenlet)."""
    def ready() -> list[str] | None:
        lines = path.read_text().splitlines() if path.exists() else []
        return lines if len(lines) >= count else None
    return wait_until(ready, timeout, f"{count} lines in {path}")


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
