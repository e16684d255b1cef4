"""``make run``: the whole thing locally, and a command to paste that shows routing happen.

Starts the control plane (routes from conf/routes/, watched), two tinyrpc demo
upstreams (v1, v2) and ``metaproxy run -c conf/metaproxy.yaml`` (a Lua and a
WASM filter in front of the router, routes over xDS), waits until all of them
accept connections, prints what to try, and stops everything on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from metaproxy.testing.harness import wait_for_port

CONFIG = os.environ.get("METAPROXY_CONFIG", "conf/metaproxy.yaml")
ROUTES = os.environ.get("METAPROXY_ROUTES", "conf/routes")
UPSTREAMS = (("v1", 9191), ("v2", 9192))


def main() -> int:
    py = sys.executable
    procs = []
    # SIGTERM (kill, a supervisor, `timeout`) must stop the children too, as Ctrl-C does: without a
    # handler Python dies at once and the `finally` below never runs, leaving them orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        for name, port in UPSTREAMS:
            procs.append(subprocess.Popen([py, "-m", "metaproxy_codecs.tinyrpc.sample", "server",
                                           "--port", str(port), "--name", name]))
        control_plane = subprocess.Popen([py, "-m", "metaproxy.cli", "control-plane", "--config-dir", ROUTES,
                                          "--listen", "127.0.0.1:15010", "--admin", "127.0.0.1:15011"])
        procs.append(control_plane)
        for _, port in UPSTREAMS:
            wait_for_port("127.0.0.1", port, 15)
        wait_for_port("127.0.0.1", 15010, 20, control_plane)
        proxy = subprocess.Popen([py, "-m", "metaproxy.cli", "run", "-c", CONFIG])
        procs.append(proxy)
        wait_for_port("127.0.0.1", 9090, 20, proxy)
        wait_for_port("127.0.0.1", 15000, 20, proxy)
        call = f"{py} -m metaproxy_codecs.tinyrpc.sample call --port 9090"
        print(f"""
metaproxy is running: tinyrpc on 127.0.0.1:9090 ({CONFIG}), admin on http://127.0.0.1:15000,
control plane on 127.0.0.1:15010 serving {ROUTES}/, demo upstreams v1 on 9191 and v2 on 9192.
Paste this in another terminal to see routing happen:

  {call} --method sayHello --count 10 ; {call} --method sayHello --header version=v2 ; {call} --method dropTable

- sayHello splits 20/80 between v1 and v2 (MetaRouter `default` in {ROUTES}/tinyrpc-demo.yaml);
- version=v2 always goes to v2 (route `by-version`);
- dropTable is denied by the Lua filter (filters/lua/deny_method.lua) before any upstream sees it;
- every request carries x-mesh, added by the WASM filter (filters/wasm/add_header.wasm).
Edit the weights in {ROUTES}/tinyrpc-demo.yaml and run the first command again: the new split
is served at once, without a restart. Stats: curl -s 127.0.0.1:15000/stats/prometheus   Stop: Ctrl-C
""", flush=True)
        return proxy.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    sys.exit(main())
