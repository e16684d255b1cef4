"""What each connected proxy has ACKed and NACKed, for the admin view and for tests."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StreamRecord:
    """One xDS stream from one proxy."""

    stream_id: int
    kind: str  # sotw | delta | fetch
    service: str  # rds | ads
    peer: str
    node_id: str = ""
    opened: float = field(default_factory=time.time)
    resource_names: list[str] = field(default_factory=list)
    sent_version: str = ""
    sent_nonce: str = ""
    acked_version: str = ""
    acked_resources: dict[str, str] = field(default_factory=dict)
    acks: int = 0
    nacks: int = 0
    last_nack: dict[str, Any] | None = None
    responses: int = 0
    stale_ignored: int = 0

    def view(self) -> dict[str, Any]:
        return {
            "stream": self.stream_id, "kind": self.kind, "service": self.service, "peer": self.peer,
            "node": self.node_id, "opened": self.opened, "resource_names": self.resource_names,
            "sent_version": self.sent_version, "sent_nonce": self.sent_nonce,
            "acked_version": self.acked_version, "acked_resources": dict(self.acked_resources),
            "acks": self.acks, "nacks": self.nacks, "last_nack": self.last_nack,
            "responses": self.responses, "stale_ignored": self.stale_ignored,
        }


class AckRegistry:
    """Open streams (and the last few closed ones) with their ACK state."""

    def __init__(self, keep_closed: int = 20) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.open: dict[int, StreamRecord] = {}
        self.closed: list[StreamRecord] = []
        self.keep_closed = keep_closed
        self.total_nacks = 0
        self.total_acks = 0

    def new(self, kind: str, service: str, peer: str) -> StreamRecord:
        with self._lock:
            record = StreamRecord(next(self._ids), kind, service, peer)
            self.open[record.stream_id] = record
            return record

    def close(self, record: StreamRecord) -> None:
        with self._lock:
            self.open.pop(record.stream_id, None)
            self.closed.append(record)
            del self.closed[:-self.keep_closed]

    def ack(self, record: StreamRecord) -> None:
        with self._lock:
            record.acks += 1
            self.total_acks += 1

    def nack(self, record: StreamRecord, version: str, nonce: str, reason: str, kept: str = "") -> None:
        """Record a NACK of ``version`` (sent with ``nonce``); ``kept`` is the version the client keeps."""
        with self._lock:
            record.nacks += 1
            self.total_nacks += 1
            record.last_nack = {"version": version, "nonce": nonce, "reason": reason, "kept_version": kept,
                                "time": time.time()}

    def view(self) -> dict[str, Any]:
        with self._lock:
            return {
                "streams": [r.view() for r in self.open.values()],
                "closed": [r.view() for r in self.closed],
                "total_acks": self.total_acks,
                "total_nacks": self.total_nacks,
            }
