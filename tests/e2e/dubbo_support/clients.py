"""Drive the two real Dubbo clients: dubbo-ssl-python in-process, dubbo2.js through a node script."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from dubbo_ssl.client import DubboClient

JS_DIR = Path(__file__).resolve().parents[2] / "js"


def ssl_call(address: tuple[str, int], interface: str, method: str, args: list[Any], *, version: str = "1.0.0",
             group: str | None = None, context: dict[str, str] | None = None, timeout: float = 5.0) -> Any:
    """One call with dubbo-ssl-python's DubboClient, connected directly to ``address``."""
    client = DubboClient(interface, group, version=version, host=f"{address[0]}:{address[1]}")
    return client.call(method, args, context=context, timeout=timeout)


def js_calls(address: tuple[str, int], calls: list[dict[str, Any]], timeout: float = 5.0,
             dubbo_version: str = "2.0.2", parallel: bool = False) -> list[dict[str, Any]]:
    """Calls made by dubbo2.js (DirectlyDubbo), one after another or all at once; results in call order.

    Each result is {"res": ..., "err": None | {"name", "message"}}.
    """
    assert (JS_DIR / "node_modules" / "dubbo2.js").is_dir(), (
        "tests/js/node_modules is missing: run `make deps-dubbo` (npm ci in tests/js)")
    payload = json.dumps({"address": f"{address[0]}:{address[1]}", "calls": calls, "timeout": timeout,
                          "dubboVersion": dubbo_version, "parallel": parallel})
    done = subprocess.run(["node", str(JS_DIR / "dubbo2js_call.js")], input=payload, capture_output=True,
                          text=True, timeout=timeout * len(calls) + 20, cwd=JS_DIR, check=False)
    assert done.returncode == 0, f"dubbo2.js script failed: {done.stderr}"
    return json.loads(done.stdout)


def java_int(value: int) -> dict[str, Any]:
    return {"$class": "int", "$": value}


def java_long(value: int) -> dict[str, Any]:
    return {"$class": "long", "$": value}


def java_string(value: str) -> dict[str, Any]:
    return {"$class": "java.lang.String", "$": value}
