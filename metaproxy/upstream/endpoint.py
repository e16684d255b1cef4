"""One upstream host of a cluster, with the state balancers and health checks share."""

from __future__ import annotations

import time


class Endpoint:
    __slots__ = (
        "host", "port", "weight", "address", "active_requests", "healthy", "ejected_until",
        "times_ejected", "consecutive_errors", "consecutive_gateway_failures", "hc_fails", "hc_passes",
        "__weakref__",
    )

    def __init__(self, host: str, port: int, weight: int = 1) -> None:
        self.host = host
        self.port = port
        self.weight = weight
        self.address = f"{host}:{port}"
        self.active_requests = 0
        #: Active health checking's verdict (True until a check says otherwise).
        self.healthy = True
        #: Outlier detection: monotonic time until which the endpoint is out of rotation.
        self.ejected_until = 0.0
        self.times_ejected = 0
        self.consecutive_errors = 0
        self.consecutive_gateway_failures = 0
        self.hc_fails = 0
        self.hc_passes = 0

    def in_rotation(self, now: float | None = None) -> bool:
        if not self.healthy:
            return False
        if self.ejected_until:
            if (now if now is not None else time.monotonic()) < self.ejected_until:
                return False
        return True

    def __repr__(self) -> str:
        return f"Endpoint({self.address})"
