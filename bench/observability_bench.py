"""What observability costs per request: access log and tracing (100% and 1% sampled) against all of them off.

    .venv/bin/python bench/observability_bench.py [--connections 50] [--seconds 3] [--rounds 2]

The same C tinyrpc load generator and upstream as bench/run.py drive one
metaproxy process per variant (a catch-all route, router only):

    off           no access log, no tracing (stats are always on: they are the baseline's)
    access_log    JSON access log to a file
    access_log_text  the text access log of docs/observability.md's example to a file (not in the default run)
    tracing_100   tracing, console exporter to a file, every request sampled
    tracing_1     the same, 1% sampled
    all_100       access log + tracing 100%
    all_1         access log + tracing 1%

Variants run in turns (``--rounds`` times each, interleaved, best round kept)
so slow drift of a shared machine hits all of them alike. Stats cannot be
switched off, so their cost is measured apart: the stat operations one
request performs, timed in this process, as a share of the proxy's CPU time
per request in the ``off`` variant.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import cpu_times, free_port, metaproxy_config, start_listening  # noqa: E402
from scenarios import LoadSpec, TinyRpcScenario  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

#: The text format of docs/observability.md's example.
TEXT_FORMAT = "%START_TIME% %DURATION%ms %SERVICE%/%METHOD% %RESPONSE_STATUS% %RESPONSE_FLAGS% %UPSTREAM_HOST%"


VARIANTS: dict[str, dict[str, Any]] = {
    "off": {},
    "access_log": {"access_log": True},
    "access_log_text": {"access_log": TEXT_FORMAT},
    "tracing_100": {"tracing": 1.0},
    "tracing_1": {"tracing": 0.01},
    "all_100": {"access_log": True, "tracing": 1.0},
    "all_1": {"access_log": True, "tracing": 0.01},
}


def variant_config(name: str, upstream_port: int, port: int, workdir: Path) -> dict[str, Any]:
    spec = VARIANTS[name]
    cfg = metaproxy_config({"codec": "tinyrpc"}, upstream_port, port)
    if spec.get("access_log"):
        fmt = spec["access_log"] if isinstance(spec["access_log"], str) else "json"
        cfg["access_log"] = [{"path": str(workdir / f"{name}.access.log"), "format": fmt}]
    if "tracing" in spec:
        cfg["tracing"] = {"service_name": "bench", "exporter": "console", "sampling_ratio": spec["tracing"],
                          "path": str(workdir / f"{name}.spans.jsonl")}
    return cfg


def measure(name: str, scenario: TinyRpcScenario, upstream_port: int, spec: LoadSpec, workdir: Path) -> dict:
    port = free_port()
    cfg_path = workdir / f"{name}.yaml"
    for stale in workdir.glob(f"{name}.*"):
        if stale.suffix in (".log", ".jsonl"):
            stale.unlink()
    cfg_path.write_text(yaml.safe_dump(variant_config(name, upstream_port, port, workdir), sort_keys=False))
    proxy = start_listening(f"metaproxy-{name}", [sys.executable, "-m", "metaproxy.cli", "run", "-c", str(cfg_path)],
                            port, workdir / f"{name}.metaproxy.log", cwd=workdir, env={"PYTHONUNBUFFERED": "1"})
    try:
        before = cpu_times(proxy.pid)
        result = scenario.run_load(port, spec)
        after = cpu_times(proxy.pid)
        proxy.check_alive()
    finally:
        proxy.stop()
    cpu_us = (sum(after) - sum(before)) * 1e6 / max(1, result.total_requests)
    return {"variant": name, "rps": result.rps, "p50_us": result.p50_us, "p99_us": result.p99_us,
            "cpu_us": cpu_us, "errors": result.errors}


def stats_cost_ns() -> float:
    """Nanoseconds of the stat operations server.py and the router do for one successful request."""
    from observability_micro import stats_request_inline, time_stats

    return time_stats(200_000, 1, stats_request_inline)


def report(rows: list[dict], stats_ns: float) -> str:
    base = next(r for r in rows if r["variant"] == "off")
    lines = [f"{'variant':12} {'req/s':>10} {'vs off':>8} {'p50 µs':>9} {'p99 µs':>9} {'cpu µs/req':>11} "
             f"{'+cpu µs':>8}"]
    for r in rows:
        lines.append(f"{r['variant']:12} {r['rps']:>10,.0f} {r['rps'] / base['rps'] - 1:>+8.1%} "
                     f"{r['p50_us']:>9.1f} {r['p99_us']:>9.1f} {r['cpu_us']:>11.1f} "
                     f"{r['cpu_us'] - base['cpu_us']:>+8.1f}")
    share = stats_ns / 1000 / base["cpu_us"] if base["cpu_us"] else 0.0
    lines.append(f"stats (always on, inside 'off'): {stats_ns:.0f} ns of stat operations per request = "
                 f"{share:.1%} of the proxy's {base['cpu_us']:.1f} µs CPU per request")
    al = next((r for r in rows if r["variant"] == "access_log"), None)
    if al is not None:
        cost = (1 - al["rps"] / base["rps"]) + share
        lines.append(f"stats + access log: about {cost:.1%} of throughput (target: at most 5%)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", type=Path, default=ROOT / "build" / "bench", help="where the C tools are built")
    p.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "access_log_text"))
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=2, help="measurements per variant, interleaved; best kept")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or "off" not in names:
        p.error(f"variants must include 'off' and be among {', '.join(VARIANTS)}")
    workdir = (args.build / "run" / "observability").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = TinyRpcScenario(args.build, workdir)
    scenario.check()
    spec = LoadSpec(args.connections, args.seconds, args.warmup, args.depth)
    upstream = scenario.start_server()
    best: dict[str, dict] = {}
    load_before = os.getloadavg()[0]
    try:
        for round_no in range(args.rounds):
            for name in names:
                row = measure(name, scenario, upstream.port, spec, workdir)
                print(f"  round {round_no + 1} {name:12} {row['rps']:>10,.0f} req/s  cpu {row['cpu_us']:6.1f} µs/req"
                      f"  errors {row['errors']}", file=sys.stderr, flush=True)
                if name not in best or row["rps"] > best[name]["rps"]:
                    best[name] = row
    finally:
        upstream.stop()
    print(f"observability cost: tinyrpc, {args.connections} connections, depth {args.depth}, "
          f"{args.seconds}s per measurement, best of {args.rounds}; load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after ({os.cpu_count()} CPUs)")
    print(report([best[n] for n in names], stats_cost_ns()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
