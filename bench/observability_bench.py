"""What observability costs per request: access log and tracing (100% and 1% sampled) against all of them off.

    .venv/bin/python bench/observability_bench.py [--connections 50] [--seconds 3] [--rounds 2]

The same C tinyrpc load generator and upstream as bench/run.py drive one
metaproxy process per variant (a catch-all route, router only):

    off           no access log, no tracing (stats are always on: they are the baseline's)
    access_log    JSON access log (the default format: every field) to a file
    access_log_text  the text access log of docs/observability.md's example to a file
    access_log_null, access_log_shm  the JSON one to /dev/null, to /dev/shm (what the file system costs;
                  not in the default run)
    tracing_100   tracing, console exporter to a file, every request sampled
    tracing_1     the same, 1% sampled
    all_100       access log + tracing 100%
    all_1         access log + tracing 1%

Variants run in turns (``--rounds`` times each, interleaved; the best round
and the median are shown) so slow drift of a shared machine hits all of them
alike. ``--pin`` puts each proxy on CPU 0 and the load generator and upstream
on CPU 1 (as ``bench/run.py --pin``): the proxy's core is its own, so what it
spends per request is what its throughput shows. The proxy runs the compiled
hot path (``METAPROXY_COMPILED=require``: a stale build fails rather than
being measured interpreted). Stats cannot be
switched off, so their cost is counted apart: the instructions a request spends
inside the compiled stats module (valgrind, bench/icount.py ``--share``), as a
share of the ``off`` variant's instructions and so of its user CPU time.
"""

from __future__ import annotations

import argparse
import os
import statistics
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
    "access_log_null": {"access_log": True, "path": "/dev/null"},
    "access_log_shm": {"access_log": True, "path": "/dev/shm/metaproxy-bench.access.log"},
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
        cfg["access_log"] = [{"path": spec.get("path", str(workdir / f"{name}.access.log")), "format": fmt}]
    if "tracing" in spec:
        cfg["tracing"] = {"service_name": "bench", "exporter": "console", "sampling_ratio": spec["tracing"],
                          "path": str(workdir / f"{name}.spans.jsonl")}
    return cfg


#: With ``--pin``: the proxy's core, and the core of this process (so of the load generator and upstream).
PROXY_CPU, LOAD_CPU = 0, 1


def pin_tree(pid: int, cpu: int) -> None:
    """Every thread of process ``pid`` (and the threads it starts later) to ``cpu``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpu})


def measure(name: str, scenario: TinyRpcScenario, upstream_port: int, spec: LoadSpec, workdir: Path,
            pin: bool = False) -> dict:
    port = free_port()
    cfg_path = workdir / f"{name}.yaml"
    for stale in workdir.glob(f"{name}.*"):
        if stale.suffix in (".log", ".jsonl"):
            stale.unlink()
    cfg_path.write_text(yaml.safe_dump(variant_config(name, upstream_port, port, workdir), sort_keys=False))
    proxy = start_listening(f"metaproxy-{name}", [sys.executable, "-m", "metaproxy.cli", "run", "-c", str(cfg_path)],
                            port, workdir / f"{name}.metaproxy.log", cwd=workdir,
                            env={"PYTHONUNBUFFERED": "1", "METAPROXY_COMPILED": "require"})
    try:
        if pin:
            pin_tree(proxy.pid, PROXY_CPU)
        before = cpu_times(proxy.pid)
        result = scenario.run_load(port, spec)
        after = cpu_times(proxy.pid)
        proxy.check_alive()
    finally:
        proxy.stop()
    per = 1e6 / max(1, result.total_requests)
    user_us, sys_us = (after[0] - before[0]) * per, (after[1] - before[1]) * per
    return {"variant": name, "rps": result.rps, "p50_us": result.p50_us, "p99_us": result.p99_us,
            "cpu_us": user_us + sys_us, "user_us": user_us, "sys_us": sys_us, "errors": result.errors}


#: The compiled stats module's functions, as mypyc names them (``CPyDef_stats___Histogram___observe``).
STATS_FUNCTIONS = r"(^|_)stats___"


def stats_instructions(build: Path) -> tuple[float, float] | None:
    """(instructions per request of the ``off`` variant, of them inside the stats code), counted by
    valgrind (bench/icount.py): what the stat operations of a real request cost, compiled as they
    ship. Their own increments written inline in compiled callers are a few instructions each and
    are not in it. None without valgrind."""
    import shutil

    from icount import measure as icount

    if shutil.which("valgrind") is None:
        return None
    shares = {"stats": STATS_FUNCTIONS}
    total = icount("tinyrpc", 2000, 20, build, sys.executable, variant="off", shares=shares)
    return total, float(shares["stats"].replace(",", ""))


def report(runs: dict[str, list[dict]], stats: tuple[float, float] | None) -> str:
    """Best round per variant, and each variant's throughput against ``off`` of the same round (the
    median over rounds: a pair seconds apart sees the same machine)."""
    best = {name: max(rows, key=lambda r: r["rps"]) for name, rows in runs.items()}
    base = best["off"]

    def paired(name: str) -> float:
        return statistics.median(r["rps"] / o["rps"] - 1 for r, o in zip(runs[name], runs["off"], strict=True))

    lines = [f"{'variant':12} {'req/s':>10} {'vs off':>8} {'paired':>8} {'p50 µs':>9} {'p99 µs':>9} "
             f"{'cpu µs/req':>11} {'+cpu µs':>8}"]
    for name, r in best.items():
        lines.append(f"{name:12} {r['rps']:>10,.0f} {r['rps'] / base['rps'] - 1:>+8.1%} {paired(name):>+8.1%} "
                     f"{r['p50_us']:>9.1f} {r['p99_us']:>9.1f} {r['cpu_us']:>11.1f} "
                     f"{r['cpu_us'] - base['cpu_us']:>+8.1f}")
    lines.append("(req/s, latency and CPU: the best round; vs off: best against best; paired: the median over "
                 "rounds of the variant against off in the same round)")
    share = 0.0
    if stats is None:
        lines.append("stats (always on, inside 'off'): not measured (valgrind is missing: make deps-bench)")
    else:
        total, inside = stats
        # user-space instructions; their share of the CPU is that share of the user time
        share = inside / total * base["user_us"] / base["cpu_us"] if base["cpu_us"] else 0.0
        lines.append(f"stats (always on, inside 'off'): {inside:,.0f} of {total:,.0f} instructions per request "
                     f"(valgrind) = {inside / total:.1%} of user time = {share:.1%} of the proxy's CPU per request")
    if "access_log" in runs:
        cost = -paired("access_log") + share
        lines.append(f"stats + JSON access log: about {cost:.1%} of throughput, paired (target: at most 5%)")
    if "access_log_text" in runs:
        cost = -paired("access_log_text") + share
        lines.append(f"stats + text access log: about {cost:.1%} of throughput, paired (target: at most 5%)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", type=Path, default=ROOT / "build" / "bench", help="where the C tools are built")
    p.add_argument("--variants",
                   default=",".join(v for v in VARIANTS if v not in ("access_log_null", "access_log_shm")))
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=2, help="measurements per variant, interleaved")
    p.add_argument("--pin", action="store_true",
                   help="each proxy on CPU 0, the load generator and the upstream on CPU 1 (needs two CPUs)")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or "off" not in names:
        p.error(f"variants must include 'off' and be among {', '.join(VARIANTS)}")
    if args.pin:
        if (os.cpu_count() or 1) < 2:
            p.error("--pin needs two CPUs")
        os.sched_setaffinity(0, {LOAD_CPU})  # inherited by the load generator and the upstream server
    workdir = (args.build / "run" / "observability").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = TinyRpcScenario(args.build, workdir)
    scenario.check()
    spec = LoadSpec(args.connections, args.seconds, args.warmup, args.depth)
    upstream = scenario.start_server()
    runs: dict[str, list[dict]] = {name: [] for name in names}
    load_before = os.getloadavg()[0]
    try:
        for round_no in range(args.rounds):
            for name in names:
                row = measure(name, scenario, upstream.port, spec, workdir, args.pin)
                print(f"  round {round_no + 1} {name:12} {row['rps']:>10,.0f} req/s  cpu {row['cpu_us']:6.1f} µs/req"
                      f" (user {row['user_us']:.1f} + system {row['sys_us']:.1f})"
                      f"  errors {row['errors']}", file=sys.stderr, flush=True)
                runs[name].append(row)
    finally:
        upstream.stop()
    print(f"observability cost: tinyrpc, {args.connections} connections, depth {args.depth}, "
          f"{args.seconds}s per measurement, {args.rounds} rounds{', pinned' if args.pin else ''}; "
          f"load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after ({os.cpu_count()} CPUs)")
    print(report(runs, stats_instructions(args.build)))
    print(f"command: {Path(sys.executable).name} bench/observability_bench.py {' '.join(argv or sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
