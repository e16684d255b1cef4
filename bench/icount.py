"""Machine instructions per proxied request, counted by valgrind: the speed figure load cannot move.

    python bench/icount.py [--scenario tinyrpc|thrift|dubbo] [--requests 2000] [--connections 20]
    python bench/icount.py --relay gevent_relay|callback_relay    # an L4 relay floor instead of metaproxy
    python bench/icount.py --variant access_log|tracing_1|...      # tinyrpc with bench/observability_bench.py's
                                                                  # access log / tracing variants

Why: on a shared 2-core machine the CPU time a request costs moves by 2x
from one run to the next (other processes take the caches and the cores);
the number of instructions the proxy executes for it moves by well under 1%.
So a change to the hot path is judged here first (A/B in minutes, no quiet
machine needed), and in ``bench/run.py`` for the throughput it buys.

How: the proxy runs under ``valgrind --tool=callgrind`` (about 50x slower,
so few requests), the C load generator sends a warm-up, the counters are
zeroed (``callgrind_control -z``), N requests are sent, the counters are
dumped, and the total is divided by N. Kernel time is not counted: system
calls cost the same in any proxy (see bench/run.py's user/sys split).
``bench/opcount.py`` says which Python functions the instructions go to.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from procs import free_port, metaproxy_config, wait_for_port  # noqa: E402

PROTOCOLS = {
    "tinyrpc": {"codec": "tinyrpc"},
    "thrift": {"codec": "thrift", "options": {"transport": "framed", "protocol": "binary"}},
    "dubbo": {"codec": "dubbo"},
}


def _load(build: Path, port: int, proto: str, conns: int, requests: int) -> str:
    out = subprocess.run([str(build / "rpc_load"), "-p", str(port), "-P", proto, "-c", str(conns),
                          "-n", str(requests), "-t", "600"], capture_output=True, text=True, timeout=900)
    if out.returncode != 0 or " 0 errors" not in out.stdout:
        raise RuntimeError(f"load failed: {out.stdout}{out.stderr}")
    return out.stdout.splitlines()[0]


def _total(dump: Path) -> int:
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def entered_cost(dump: Path, pattern: str) -> int:
    """Instructions spent inside functions whose name matches ``pattern``, callees included, counted
    on the calls made into them from functions that do not match (so nested calls count once).

    Read from callgrind's call edges: after ``calls=`` the next cost line is the calls' inclusive
    cost. What callers do inline (a compiled caller incrementing a native counter's field itself)
    is not in any such function and is not counted.
    """
    match = re.compile(pattern).search
    names: dict[str, str] = {}

    def name(spec: str) -> str:  # "(id) name" defines a compressed name, "(id)" uses it
        spec = spec.strip()
        if spec.startswith("("):
            key, _, rest = spec.partition(")")
            if rest.strip():
                names[key] = rest.strip()
            return names.get(key, spec)
        return spec

    total, caller, callee, edge = 0, "", "", False
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("fn="):
            caller = name(line[3:])
        elif line.startswith("cfn="):
            callee = name(line[4:])
        elif line.startswith("calls="):
            edge = True
        elif edge and line[:1] in "0123456789+-*":
            edge = False
            if match(callee) and not match(caller):
                total += int(line.split()[1])
    return total


def measure(scenario: str, requests: int, conns: int, build: Path, python: str, relay: str | None = None,
            variant: str | None = None, keep: Path | None = None,
            shares: dict[str, str] | None = None) -> float:
    """Instructions per request of a metaproxy (one listener, router, one upstream) for ``scenario``.

    ``relay``: measure bench/RELAY.py (an L4 relay, no decoding) in its place. ``variant``: the
    config of bench/observability_bench.py's variant of that name (tinyrpc), for what an access
    log or tracing adds. ``keep``: copy callgrind's dump there (for ``callgrind_annotate``).
    ``shares``: label -> function-name pattern; each is replaced by its instructions per request
    (:func:`entered_cost`).
    """
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: `make deps-bench` installs valgrind")
    work = Path(tempfile.mkdtemp(prefix="icount-"))
    upstream_port, port = free_port(), free_port()
    server = subprocess.Popen([str(build / "rpc_server"), "-P", scenario, "-p", str(upstream_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = work / "metaproxy.yaml"
    if variant:
        from observability_bench import variant_config

        config = variant_config(variant, upstream_port, port, work)
    else:
        config = metaproxy_config(PROTOCOLS[scenario], upstream_port, port)
    cfg.write_text(yaml.safe_dump(config))
    program = [python, str(HERE / f"{relay}.py"), str(port), str(upstream_port)] if relay else \
        [python, "-m", "metaproxy.cli", "run", "-c", str(cfg)]
    proxy = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/cg.out", *program],
                             stdout=subprocess.DEVNULL, stderr=(work / "valgrind.log").open("w"), cwd=work)
    try:
        wait_for_port(upstream_port, server, 10.0)
        wait_for_port(port, proxy, 120.0)
        _load(build, port, scenario, conns, max(200, requests // 4))  # warm-up: connections, caches
        subprocess.run(["callgrind_control", "-z", str(proxy.pid)], capture_output=True, check=True, timeout=60)
        print(_load(build, port, scenario, conns, requests))
        subprocess.run(["callgrind_control", "-d", str(proxy.pid)], capture_output=True, check=True, timeout=60)
        deadline = time.monotonic() + 60
        dumps: list[Path] = []
        while time.monotonic() < deadline and not dumps:
            dumps = [p for p in work.glob("cg.out.*") if re.search(r"\.\d+$", p.name)]
            time.sleep(0.2)  # waiting for valgrind's file: no readiness signal to poll but the file
        if not dumps:
            raise RuntimeError("callgrind wrote no dump")
        dump = max(dumps, key=lambda p: p.stat().st_mtime)
        if keep is not None:
            shutil.copy(dump, keep)
        for label, pattern in (shares or {}).items():
            shares[label] = f"{entered_cost(dump, pattern) / requests:,.0f}"  # type: ignore[index]
        return _total(dump) / requests
    finally:
        proxy.kill()
        server.kill()
        proxy.wait()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default="tinyrpc", choices=sorted(PROTOCOLS))
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--connections", type=int, default=20)
    p.add_argument("--build", type=Path, default=HERE.parent / "build" / "bench")
    p.add_argument("--python", default=sys.executable, help="the interpreter the proxy runs on")
    p.add_argument("--relay", choices=("gevent_relay", "callback_relay"),
                   help="measure this L4 relay of bench/ instead of metaproxy (the floor of each serving shape)")
    p.add_argument("--keep", type=Path, help="copy callgrind's dump to this file (callgrind_annotate FILE)")
    p.add_argument("--variant", help="an observability variant of bench/observability_bench.py (tinyrpc only)")
    p.add_argument("--share", action="append", default=[], metavar="LABEL=REGEX",
                   help="also the instructions per request inside functions matching REGEX, entered from "
                        "others (e.g. stats='(^|_)stats___' for the compiled stats module)")
    args = p.parse_args()
    shares = dict(item.split("=", 1) for item in args.share)
    patterns = dict(shares)
    if args.variant and args.scenario != "tinyrpc":
        p.error("--variant measures tinyrpc")
    per = measure(args.scenario, args.requests, args.connections, args.build, args.python, args.relay, args.variant,
                  args.keep, shares)
    print(f"{args.relay or 'metaproxy'}{' ' + args.variant if args.variant else ''}, {args.scenario}: "
          f"{per:,.0f} instructions per request (user space, valgrind callgrind)")
    for label, cost in shares.items():
        print(f"  of which {label}: {cost} instructions per request (functions matching {patterns[label]!r})")


if __name__ == "__main__":
    main()
