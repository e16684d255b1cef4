"""Load balancers: pick one endpoint of a cluster for one request.

Every balancer sees only the endpoints in rotation (healthy, not ejected) and
may be asked to avoid the endpoints a request already failed on (retries).
Hashing balancers read the request's ``hash_policy`` keys from Metadata.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence
from typing import Protocol

from metaproxy.upstream.endpoint import Endpoint


class LoadBalancer(Protocol):
    def choose(self, endpoints: Sequence[Endpoint], hash_key: str | None,
               exclude: Sequence[Endpoint] = ()) -> Endpoint | None: ...

    def rebuild(self, endpoints: Sequence[Endpoint]) -> None: ...


def _avoiding(endpoints: Sequence[Endpoint], exclude: Sequence[Endpoint]) -> Sequence[Endpoint]:
    if not exclude:
        return endpoints
    rest = [e for e in endpoints if e not in exclude]
    return rest or endpoints


class _Unhashed:
    """Balancers that ignore the hash key: the shared preamble (avoid tried endpoints, one left)."""

    def rebuild(self, endpoints: Sequence[Endpoint]) -> None:
        pass

    def choose(self, endpoints: Sequence[Endpoint], hash_key: str | None,
               exclude: Sequence[Endpoint] = ()) -> Endpoint | None:
        candidates = _avoiding(endpoints, exclude)
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        return self.pick(candidates)

    def pick(self, candidates: Sequence[Endpoint]) -> Endpoint:
        raise NotImplementedError


class RoundRobin(_Unhashed):
    """Weighted round robin over a repeating schedule of the weights."""

    def __init__(self) -> None:
        self._index = 0
        self._weights_of: object = None
        self._total = 0
        self._uniform = True

    def pick(self, candidates: Sequence[Endpoint]) -> Endpoint:
        if self._weights_of is not candidates:  # weights summed once per rotation list, not per request
            self._weights_of = candidates
            self._total = sum(e.weight for e in candidates)
            self._uniform = self._total == len(candidates)
        self._index = (self._index + 1) % self._total
        if self._uniform:
            return candidates[self._index]
        point = self._index
        for e in candidates:
            point -= e.weight
            if point < 0:
                return e
        return candidates[-1]


class RandomLB(_Unhashed):
    def pick(self, candidates: Sequence[Endpoint]) -> Endpoint:
        return random.choices(candidates, weights=[e.weight for e in candidates])[0]


class LeastRequest(_Unhashed):
    """Power of two choices on active requests (Envoy's default least_request)."""

    def pick(self, candidates: Sequence[Endpoint]) -> Endpoint:
        a, b = random.sample(candidates, 2)
        return a if a.active_requests / a.weight <= b.active_requests / b.weight else b


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class RingHash:
    """Consistent hashing on a ring of virtual nodes (Ketama style).

    Adding or removing one of N endpoints moves about 1/N of the keys.
    The ring is built over all endpoints; unhealthy ones are skipped by
    walking on, so a recovering endpoint gets its own keys back.
    """

    def __init__(self, vnodes_per_weight: int = 100) -> None:
        self.vnodes = vnodes_per_weight
        self._points: list[int] = []
        self._owners: list[Endpoint] = []
        self._rr = RoundRobin()

    def rebuild(self, endpoints: Sequence[Endpoint]) -> None:
        ring = []
        for e in endpoints:
            for i in range(self.vnodes * e.weight):
                ring.append((_hash64(f"{e.address}#{i}"), e))
        ring.sort(key=lambda item: item[0])
        self._points = [p for p, _ in ring]
        self._owners = [e for _, e in ring]

    def choose(self, endpoints: Sequence[Endpoint], hash_key: str | None,
               exclude: Sequence[Endpoint] = ()) -> Endpoint | None:
        if hash_key is None or not self._points:
            return self._rr.choose(endpoints, None, exclude)
        usable = set(_avoiding(endpoints, exclude))
        start = bisect.bisect_left(self._points, _hash64(hash_key))
        n = len(self._points)
        for step in range(n):
            owner = self._owners[(start + step) % n]
            if owner in usable:
                return owner
        return None


class Maglev:
    """Maglev lookup table (Google's Maglev paper): even spread, minimal disruption."""

    TABLE_SIZE = 65537

    def __init__(self) -> None:
        self._table: list[Endpoint] = []
        self._rr = RoundRobin()

    def rebuild(self, endpoints: Sequence[Endpoint]) -> None:
        if not endpoints:
            self._table = []
            return
        m = self.TABLE_SIZE
        prefs = []
        for e in endpoints:
            offset = _hash64(e.address + "#offset") % m
            skip = _hash64(e.address + "#skip") % (m - 1) + 1
            prefs.append((offset, skip))
        table: list[Endpoint | None] = [None] * m
        nexts = [0] * len(endpoints)
        filled = 0
        weights = [e.weight for e in endpoints]
        top = max(weights)
        credit = [0.0] * len(endpoints)
        while filled < m:
            for i, e in enumerate(endpoints):
                credit[i] += weights[i] / top
                if credit[i] < 1:
                    continue
                credit[i] -= 1
                offset, skip = prefs[i]
                c = (offset + nexts[i] * skip) % m
                while table[c] is not None:
                    nexts[i] += 1
                    c = (offset + nexts[i] * skip) % m
                table[c] = e
                nexts[i] += 1
                filled += 1
                if filled == m:
                    break
        self._table = table  # type: ignore[assignment]

    def choose(self, endpoints: Sequence[Endpoint], hash_key: str | None,
               exclude: Sequence[Endpoint] = ()) -> Endpoint | None:
        if hash_key is None or not self._table:
            return self._rr.choose(endpoints, None, exclude)
        usable = set(_avoiding(endpoints, exclude))
        h = _hash64(hash_key)
        m = len(self._table)
        for step in range(64):
            owner = self._table[(h + step * 7919) % m]
            if owner in usable:
                return owner
        return self._rr.choose(list(usable), None) if usable else None


def make_balancer(policy: str) -> LoadBalancer:
    return {
        "round_robin": RoundRobin,
        "random": RandomLB,
        "least_request": LeastRequest,
        "ring_hash": RingHash,
        "maglev": Maglev,
    }[policy]()
