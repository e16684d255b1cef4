"""The control plane: MetaRouter/ApplicationProtocol YAML -> xDS route discovery over gRPC.

``main(argv)`` is the ``metaproxy control-plane`` command; :class:`ControlPlane`
runs the same thing in-process.
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    """``metaproxy control-plane [options]``; returns the process exit code."""
    from metaproxy.controlplane.main import main as _main

    return _main(argv)


__all__ = ["main"]
