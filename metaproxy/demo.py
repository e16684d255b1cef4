"""``make run``: the proxy with conf/metaproxy.yaml, its demo upstreams, and a command to try.

Starts two tinyrpc demo servers (v1, v2) and ``metaproxy run``, waits until
they accept connections, prints what to paste into another terminal, and
stops everything on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from metaproxy.testing.harness import wait_for_port

CONFIG = os.environ.get("METAPROXY_CONFIG", "conf/metaproxy.yaml")
UPSTREAMS = (("v1", 9191), ("v2", 9192))


def main() -> int:
    py = sys.executable
    procs = []
    try:
        for name, port in UPSTREAMS:
            procs.append(subprocess.Popen([py, "-m", "metaproxy_codecs.tinyrpc.sample", "server",
                                           "--port", str(port), "--name", name]))
        for _, port in UPSTREAMS:
            wait_for_port("127.0.0.1", port, 15)
        proxy = subprocess.Popen([py, "-m", "metaproxy.cli", "run", "-c", CONFIG])
        procs.append(proxy)
        wait_for_port("127.0.0.1", 9090, 20, proxy)
        wait_for_port("127.0.0.1", 15000, 20, proxy)
        call = f"{py} -m metaproxy_codecs.tinyrpc.sample call --port 9090"
        print(f"""
metaproxy is running ({CONFIG}): tinyrpc on 127.0.0.1:9090, admin on http://127.0.0.1:15000
Upstreams: v1 on 9191, v2 on 9192. Paste this in another terminal to see routing happen:

  {call} --method sayHello --count 10 ; {call} --method sayHello --header x-user=test-1 ; {call} --method other

(sayHello splits 20/80 between v1 and v2; x-user=test-* is the canary route to v2; the rest goes to v1.)
Stats: curl -s 127.0.0.1:15000/stats | grep -v ' 0$'        Stop: Ctrl-C
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
