"""Time from a MetaRouter file change to the new routes serving traffic (10, 1,000, 10,000 routes).

    .venv/bin/python bench/xds_bench.py [--routes 10,1000,10000] [--repeat 5] [--watcher auto|inotify|poll]
                                        [--debounce 10ms] [--json]

For each size: a control plane process watches a folder with one MetaRouter
of N routes (N-1 that match method m0..m{N-2}, and a last catch-all route
that sends everything else to v1 or v2); a metaproxy process subscribes over
RDS; two tinyrpc upstreams answer with their names. Each round rewrites the
file flipping the last route between v1 and v2, then sends requests that
reach the last route (so the whole table is walked) until one is served by
the new side. The time from the rename of the file to that response is the
"file change -> serving" time. Its parts are printed next to it: the
watcher's settle time (first sign of the change -> reload: the debounce,
mostly), the control plane's load (read, parse, validate, translate), the
proxy's apply (unpack, build the table, swap); what is left is the push over
gRPC, the probe requests and scheduling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from metaproxy.testing.harness import ProxyProcess, free_port  # noqa: E402
from metaproxy_codecs.tinyrpc.sample import TinyRpcClient, TinyRpcServer  # noqa: E402
from tests.xds.helpers import ControlPlaneProcess, wait_until, write_docs  # noqa: E402

NAME = "demo_9191"


def meta_router(n: int, last: str) -> dict:
    routes = [{"name": f"r{i}", "match": {"attributes": {"method": {"exact": f"m{i}"}}},
               "route": [{"destination": {"host": "demo", "subset": "v1"}}]} for i in range(n - 1)]
    routes.append({"name": "last", "route": [{"destination": {"host": "demo", "subset": last}}]})
    return {"apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "MetaRouter", "metadata": {"name": "bench"},
            "spec": {"hosts": ["demo"], "port": 9191, "routes": routes}}


def served_by(client: TinyRpcClient) -> str:
    _, body = client.call("probe")
    return body.split(b":", 1)[0].decode()


def admin_json(address: tuple[str, int], path: str) -> dict:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}{path}", timeout=10) as r:
        return json.loads(r.read())


def measure(n: int, repeat: int, work: Path, v1: TinyRpcServer, v2: TinyRpcServer, cp_args: list[str]) -> dict:
    routes = work / f"routes-{n}"
    routes.mkdir()
    write_docs(routes / "bench.yaml", meta_router(n, "v1"))
    cp = ControlPlaneProcess(routes, work / f"cp-{n}.log", free_port(), free_port(), extra=cp_args,
                             timing=None).start(timeout=60)
    config = {
        "admin": {"address": "127.0.0.1:0"},
        "listeners": [{"name": "in", "address": "127.0.0.1:0", "protocol": {"codec": "tinyrpc"},
                       "rds": {"route_config_name": NAME, "server": f"127.0.0.1:{cp.port}",
                               "initial_fetch_timeout": "30s"}}],
        "clusters": [{"name": "outbound|9191|v1|demo", "endpoints": [v1.address]},
                     {"name": "outbound|9191|v2|demo", "endpoints": [v2.address]}],
    }
    proxy = ProxyProcess(config, work / f"proxy-{n}").start(timeout=60)
    times, loads, cpus, settles, applies, apply_cpus, pushes = [], [], [], [], [], [], []
    try:
        wait_until(lambda: admin_json(proxy.admin_address, "/config_dump")["listeners"][0]["route_config"],
                   timeout=60, interval=0.05)
        with TinyRpcClient(*proxy.address()) as client:
            side = "v1"
            assert served_by(client) == side
            for _ in range(repeat):
                side = "v2" if side == "v1" else "v1"
                loads_before = cp.get("/healthz")["loads"]
                updates_before = rds_status(proxy)["updates"]
                staged = routes / ".bench.yaml.next"  # dot files are not watched
                staged.write_text(yaml.safe_dump(meta_router(n, side), sort_keys=False))
                began = time.monotonic()
                staged.replace(routes / "bench.yaml")  # the change: one atomic rename
                while served_by(client) != side:
                    if time.monotonic() - began > 60:
                        raise TimeoutError(f"{n} routes: the change was not served within 60 s")
                times.append(time.monotonic() - began)
                health = wait_until(lambda lb=loads_before: (h := cp.get("/healthz")) and h["loads"] > lb and h,
                                    timeout=10)
                loads.append(health["last_load_ms"])
                cpus.append(health["last_load_cpu_ms"])
                settles.append(health["last_settle_ms"])
                rds = wait_until(lambda ub=updates_before: (r := rds_status(proxy)) and r["updates"] > ub and r,
                                 timeout=10)
                applies.append(rds["last_apply_ms"])
                apply_cpus.append(rds["last_apply_cpu_ms"])
                pushes.append((rds["last_received_at"] - health["last_published_at"]) * 1000)
        watcher = cp.get("/healthz")["watcher"]
    finally:
        proxy.stop()
        cp.stop()
    med = statistics.median
    return {"routes": n, "median_ms": med(times) * 1000, "max_ms": max(times) * 1000,
            "settle_ms": med(settles), "cp_load_ms": med(loads), "cp_load_cpu_ms": med(cpus),
            "push_ms": med(pushes),
            "apply_ms": med(applies), "apply_cpu_ms": med(apply_cpus), "rounds": len(times), "watcher": watcher}


def rds_status(proxy: ProxyProcess) -> dict:
    return admin_json(proxy.admin_address, "/config_dump")["listeners"][0]["rds"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", default="10,1000,10000", help="comma-separated route counts")
    parser.add_argument("--repeat", type=int, default=5, help="changes measured per size")
    parser.add_argument("--watcher", choices=("auto", "inotify", "poll"), default="auto",
                        help="the control plane's file watcher (default %(default)s)")
    parser.add_argument("--debounce", default=None, help="the control plane's debounce (default: its own)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)
    cp_args = ["--watcher", args.watcher] + (["--debounce", args.debounce] if args.debounce else [])
    load_before = os.getloadavg()[0]
    v1, v2 = TinyRpcServer(0, "v1").start(), TinyRpcServer(0, "v2").start()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="xds-bench-") as tmp:
            for n in (int(x) for x in args.routes.split(",")):
                results.append(measure(n, args.repeat, Path(tmp), v1, v2, cp_args))
                print(f"measured {n} routes", file=sys.stderr)
    finally:
        v1.stop()
        v2.stop()
    print("\nFile change -> new routes serving (control plane + metaproxy over RDS), "
          f"watcher {results[0]['watcher'] if results else '?'}\n")
    cols = [("routes", "routes", "d"), ("median ms", "median_ms", ".1f"), ("max ms", "max_ms", ".1f"),
            ("cp settle ms", "settle_ms", ".1f"), ("cp load ms", "cp_load_ms", ".1f"),
            ("cp load cpu ms", "cp_load_cpu_ms", ".1f"), ("push ms", "push_ms", ".1f"),
            ("proxy apply ms", "apply_ms", ".1f"),
            ("proxy apply cpu ms", "apply_cpu_ms", ".1f"), ("rounds", "rounds", "d")]
    print("| " + " | ".join(f"{title:>{len(title)}}" for title, _, _ in cols) + " |")
    print("|" + "|".join("-" * (len(title) + 2) for title, _, _ in cols) + "|")
    for r in results:
        print("| " + " | ".join(f"{r[key]:>{len(title)}{fmt}}" for title, key, fmt in cols) + " |")
    print("\nmedians; cp settle = the watcher's first sign of the change -> reload (debounce, mostly);"
          "\ncp load = reading, parsing, validating and translating what changed (wall and thread CPU);"
          "\npush = control plane's store updated -> proxy has the response (gRPC, both processes' scheduling);"
          "\nproxy apply = unpack, build and swap the route table; the rest of the total is the rename -> first"
          "\ninotify event, and the probe request in flight at the swap.")
    load_after = os.getloadavg()[0]
    print(f"load average: {load_before:.2f} before, {load_after:.2f} after, on {os.cpu_count()} cores"
          " (above ~0.5, other processes shared the CPU and wall times are inflated)")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
