"""Benchmark metaproxy side by side with the server alone and with HAProxy, in one run.

    .venv/bin/python bench/run.py [--scenarios tinyrpc] [--connections 1,50] [--seconds 3]
    .venv/bin/python bench/run.py --profile          # one metaproxy measurement under a profiler

For every scenario (a protocol: its upstream server and load generator, see
scenarios.py) the upstream server is started once; then each path is
measured at each connection count: client -> server, client -> HAProxy
(mode tcp) -> server, client -> metaproxy -> server.

Proxy CPU time per request comes from /proc (utime + stime of the proxy's
process tree, read before and after the load run, divided by the requests
it carried, warm-up included), also split into user and system (kernel)
time. "Other load" is the CPU that processes outside the benchmark used
meanwhile (cores, from /proc/stat): on a shared machine a row whose other
load is well above 0 was disturbed. All numbers of one table come from the
same run on the same machine, which is the only way to compare them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from catalog import SCENARIOS
from procs import Service, cpu_times, machine_busy_seconds, rss_kib
from profiling import cprofile_launcher, pyspy_path, start_pyspy, summarize_cprofile, summarize_pyspy
from report import IdleMemory, Row, median_rows, memory_table, ratios_table, results_table
from scenarios import LoadSpec, Scenario
from targets import TARGETS, MetaProxy, Target

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", type=Path, default=ROOT / "build" / "bench", help="where the C tools are built")
    p.add_argument("--scenarios", default="all", help=f"'all' or comma-separated, of: {', '.join(SCENARIOS)}")
    p.add_argument("--targets", default="direct,haproxy,metaproxy,haproxy-2t,metaproxy-2w",
                   help=f"of: {', '.join(TARGETS)}")
    p.add_argument("--connections", default="1,50", help="comma-separated connection counts")
    p.add_argument("--depth", type=int, default=1, help="requests in flight per connection (pipelining)")
    p.add_argument("--seconds", type=float, default=2.0, help="measured seconds per measurement")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every target this many times, taking turns; tables show the median round")
    p.add_argument("--pin", action="store_true",
                   help="one-core pairs only: each proxy on CPU 0, load generator and server on CPU 1")
    p.add_argument("--warmup", type=float, default=0.3, help="unmeasured seconds before each measurement")
    p.add_argument("--idle", type=int, default=1000,
                   help="idle connections opened to each proxy to measure memory per connection (0: skip)")
    p.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    p.add_argument("--profile", action="store_true", help="profile metaproxy for one measurement instead")
    p.add_argument("--profiler", choices=("auto", "py-spy", "cprofile"), default="auto")
    p.add_argument("--profile-connections", type=int, default=50)
    return p.parse_args(argv)


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _scenario_names(text: str) -> list[str]:
    names = list(SCENARIOS) if text == "all" else _csv(text)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    return names


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not found"


def machine_summary() -> str:
    model = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    code = _version(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    return (f"machine: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {model}; "
            f"Linux {platform.release()}; Python {platform.python_version()}; {_version(['haproxy', '-v'])}; "
            f"load average before the run: {load}; code: {code}")


def idle_memory(scenario: Scenario, target: Target, proxy: Service, count: int) -> IdleMemory:
    """Resident memory the proxy adds per connection that served one request and then sits idle."""
    before = rss_kib(proxy.pid)
    socks = scenario.open_idle(proxy.port, count)
    try:
        after = rss_kib(proxy.pid)
        proxy.check_alive()
    finally:
        for sock in socks:
            sock.close()
    return IdleMemory(scenario.name, target.name, count, before, after)


def _our_cpu(proxy: Service | None, upstream: Service) -> float:
    """CPU seconds used so far by the benchmark's own processes: runner, finished clients, upstream, proxy."""
    total = sum(cpu_times(upstream.pid)) + (0.0 if proxy is None else sum(cpu_times(proxy.pid)))
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def measure_once(scenario: Scenario, target: Target, upstream: Service, proxy: Service | None, spec: LoadSpec,
                 round_no: int = 1) -> Row:
    """One load run through an already started target: its row (throughput, latency, the proxy's CPU)."""
    port = upstream.port if proxy is None else proxy.port
    before = None if proxy is None else cpu_times(proxy.pid)
    ours_before = _our_cpu(proxy, upstream)
    busy_before, started = machine_busy_seconds(), time.monotonic()
    result = scenario.run_load(port, spec)
    foreign = ((machine_busy_seconds() - busy_before) - (_our_cpu(proxy, upstream) - ours_before)) \
        / (time.monotonic() - started)
    cpu = None
    if proxy is not None and before is not None:
        proxy.check_alive()
        after = cpu_times(proxy.pid)
        per_request = 1e6 / max(1, result.total_requests)
        cpu = ((after[0] - before[0]) * per_request, (after[1] - before[1]) * per_request)
    upstream.check_alive()
    row = Row(scenario.name, target.name, spec.connections, spec.depth, result, cpu, max(0.0, foreign), round_no)
    cpu_us = row.cpu_us_per_request
    print(f"  {scenario.name:10} {target.name:12} conns={spec.connections:<4} round {round_no} "
          f"{result.rps:>10,.0f} req/s  p50 {result.p50_us:8.1f} µs  p99 {result.p99_us:8.1f} µs"
          + ("" if cpu_us is None else f"  cpu {cpu_us:6.1f} µs/req")
          + f"  other load {row.foreign_cores:.2f} cores", file=sys.stderr, flush=True)
    return row


#: The targets that use one core: what ``--pin`` can place on a core of their own.
ONE_CORE = ("haproxy", "metaproxy", "metaproxy-py")
PROXY_CPU, LOAD_CPU = 0, 1


def pin_tree(pid: int, cpu: int) -> None:
    """Every thread of process ``pid`` to ``cpu`` (threads it starts later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpu})


def measure_scenario(scenario: Scenario, targets: list[Target], upstream: Service, specs: list[LoadSpec],
                     workdir: Path, rounds: int = 1, idle: int = 0,
                     pin: bool = False) -> tuple[list[Row], list[IdleMemory]]:
    """Every target through every load spec, ``rounds`` times, the targets taking turns within a round.

    Why rounds: on a shared machine the speed of the CPU drifts between runs
    seconds apart (the same proxy measured 27-42 µs of user CPU per request in
    back-to-back runs), so one measurement of HAProxy followed by one of
    metaproxy compares two machines. Interleaved rounds put each pair seconds
    apart, and the median over rounds ignores a disturbed one. Every target's
    process is started once, before the first round, and serves all of them.

    ``pin``: each proxy's threads go to CPU 0 (the runner, and so the load generator and the
    upstream server it starts, are on CPU 1): the proxy never shares its core, and the
    scheduler cannot move it next to the load in one round and not in the next.
    """
    started: list[tuple[Target, Service | None]] = []
    rows: list[Row] = []
    memory: list[IdleMemory] = []
    try:
        for target in targets:
            service = target.start(scenario, upstream, workdir)
            if pin and service is not None:
                pin_tree(service.pid, PROXY_CPU)
            started.append((target, service))
        for round_no in range(1, rounds + 1):
            for target, proxy in started:
                for spec in (scenario.effective_spec(s) for s in specs):
                    rows.append(measure_once(scenario, target, upstream, proxy, spec, round_no))
        if idle > 0:
            for target, proxy in started:
                if proxy is not None:
                    memory.append(idle_memory(scenario, target, proxy, idle))
    finally:
        for _, proxy in started:
            if proxy is not None:
                proxy.stop()
    return rows, memory


def run_benchmark(args: argparse.Namespace) -> tuple[list[Row], list[IdleMemory]]:
    specs = [LoadSpec(int(c), args.seconds, args.warmup, args.depth) for c in _csv(args.connections)]
    rows: list[Row] = []
    memory: list[IdleMemory] = []
    for name in _scenario_names(args.scenarios):
        workdir = args.build / "run" / name
        workdir.mkdir(parents=True, exist_ok=True)
        scenario = SCENARIOS[name](args.build, workdir)
        scenario.check()
        upstream = scenario.start_server()
        try:
            targets = [TARGETS[t]() for t in _csv(args.targets)]
            more, mem = measure_scenario(scenario, targets, upstream, specs, workdir, args.rounds, args.idle,
                                         args.pin)
            rows += more
            memory += mem
        finally:
            upstream.stop()
    return rows, memory


def run_profile(args: argparse.Namespace) -> str:
    """One metaproxy measurement under a profiler; returns the summary to print."""
    use_pyspy = args.profiler == "py-spy" or (args.profiler == "auto" and pyspy_path() is not None)
    name = _scenario_names("tinyrpc" if args.scenarios == "all" else args.scenarios)[0]
    workdir = args.build / "run" / f"{name}-profile"
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = SCENARIOS[name](args.build, workdir)
    scenario.check()
    stats = workdir / ("pyspy.txt" if use_pyspy else "cprofile.pstats")
    stats.unlink(missing_ok=True)
    upstream = scenario.start_server()
    try:
        target = MetaProxy(None if use_pyspy else cprofile_launcher(stats))
        proxy = target.start(scenario, upstream, workdir)
        assert proxy is not None
        try:
            spec = LoadSpec(args.profile_connections, args.seconds, 0.0, args.depth)
            scenario.run_load(proxy.port, LoadSpec(spec.connections, 0.5, 0.0, spec.depth))  # warm the pools
            sampler = start_pyspy(proxy.pid, args.seconds, stats) if use_pyspy else None
            result = scenario.run_load(proxy.port, spec)
            if sampler is not None:
                _, err = sampler.communicate(timeout=args.seconds + 30)
                if sampler.returncode != 0:
                    raise RuntimeError(f"py-spy failed: {err.strip()}")
        finally:
            proxy.stop()
    finally:
        upstream.stop()
    head = (f"profiled run ({'py-spy' if use_pyspy else 'cProfile'} slows the proxy; not a benchmark figure): "
            f"{scenario.name}, {spec.connections} connections, {result.rps:,.0f} req/s")
    body = summarize_pyspy(stats) if use_pyspy else summarize_cprofile(_wait_for(stats))
    return f"{head}\n\n{body}"


def _wait_for(path: Path, timeout: float = 10.0) -> Path:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} was not written: did metaproxy exit cleanly on SIGTERM?")
        time.sleep(0.05)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.build = args.build.resolve()
    machine = machine_summary()
    print(machine, flush=True)
    if args.profile:
        print(run_profile(args))
        return 0
    if args.pin:
        two_core = [t for t in _csv(args.targets) if t not in ONE_CORE and t != "direct"]
        if two_core or os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
            raise SystemExit(f"--pin needs two CPUs and one-core targets only ({', '.join(ONE_CORE)}, direct); "
                             f"not {', '.join(two_core)}")
        os.sched_setaffinity(0, {LOAD_CPU})  # inherited by the load generator and the upstream server
    started = time.monotonic()
    rows, memory = run_benchmark(args)
    command = " ".join([Path(sys.executable).name, "bench/run.py", *(argv or sys.argv[1:])])
    print(f"\ncommand: {command}")
    print(f"each measurement: {args.warmup}s warm-up + {args.seconds}s measured, "
          f"{args.depth} request(s) in flight per connection, {args.rounds} round(s) taking turns; "
          f"whole run {time.monotonic() - started:.0f}s\n")
    print(results_table(median_rows(rows)))
    print()
    print(ratios_table(rows))
    if memory:
        print()
        print(memory_table(memory))
    if args.json:
        data = {"machine": machine, "command": command, "seconds": args.seconds, "warmup": args.warmup,
                "rows": [r.as_dict() for r in rows], "idle_memory": [asdict(m) for m in memory]}
        args.json.write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
