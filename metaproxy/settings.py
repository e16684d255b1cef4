"""A small reader for nested config dicts that reports problems by key path.

Every config object (proxy, routes, filters, codec options) is read through a
:class:`Section`, so every error reads like
``conf/proxy.yaml: listeners[0].route_config.routes[2].match: unknown key 'metdata'``.
Problems are collected, not raised one at a time, so ``metaproxy validate``
prints them all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

_MISSING: Any = object()
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h)?\s*$")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ConfigError(Exception):
    """One or more problems in a configuration; ``problems`` lists each with its path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_duration(value: Any) -> float:
    """``250ms``, ``2s``, ``1.5``, ``1m`` -> seconds. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 250ms or 2s, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("duration must not be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"expected a duration like 250ms or 2s, got {value!r}")


def parse_address(value: Any) -> tuple[str, int]:
    """``host:port`` (``[::1]:80`` for IPv6) -> (host, port). Raises ValueError."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"expected host:port, got {value!r}")
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port in {value!r} is not a number") from None
    if not host or not 0 <= port <= 65535:
        raise ValueError(f"expected host:port with port 0-65535, got {value!r}")
    return host, port


class Section:
    """A mapping at a key path. ``take`` reads keys; ``finish`` reports unknown ones."""

    def __init__(self, value: Any, path: str, problems: list[str], prefix: str = "") -> None:
        self.path = path
        self.problems = problems
        self.prefix = prefix
        self._seen: set[str] = set()
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.problem(f"expected a mapping, got {type(value).__name__}")
            value = {}
        self.data: dict[str, Any] = value

    # -- reporting ----------------------------------------------------------
    def key_path(self, key: str | None = None) -> str:
        if key is None:
            return self.path or "(top)"
        return f"{self.path}.{key}" if self.path else key

    def problem(self, message: str, key: str | None = None) -> None:
        self.problems.append(f"{self.prefix}{self.key_path(key)}: {message}")

    @property
    def ok(self) -> bool:
        return not self.problems

    # -- reading ------------------------------------------------------------
    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = None) -> Any:
        self._seen.add(key)
        return self.data.get(key, default)

    def take(
        self,
        key: str,
        kind: type | tuple[type, ...] | str,
        default: Any = _MISSING,
        check: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Read ``key`` as ``kind`` (a type, or "duration"/"address"); record a problem if wrong.

        ``check`` may convert the value or raise ValueError with the reason.
        """
        self._seen.add(key)
        if key not in self.data or self.data[key] is None:
            if default is _MISSING:
                self.problem("required key is missing", key)
                return None
            return default
        value = self.data[key]
        try:
            if kind == "duration":
                value = parse_duration(value)
            elif kind == "address":
                value = parse_address(value)
            elif isinstance(kind, (type, tuple)):
                kinds = kind if isinstance(kind, tuple) else (kind,)
                if float in kinds and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                    names = " or ".join(k.__name__ for k in kinds)
                    raise ValueError(f"expected {names}, got {type(value).__name__} {value!r}")
            if check is not None:
                value = check(value)
        except ValueError as exc:
            self.problem(str(exc), key)
            return None if default is _MISSING else default
        return value

    def section(self, key: str, required: bool = False) -> Section | None:
        self._seen.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                self.problem("required key is missing", key)
            return None
        return Section(self.data[key], self.key_path(key), self.problems, self.prefix)

    def sections(self, key: str, required: bool = False) -> Iterator[Section]:
        """Each mapping in the list under ``key``, with paths like ``key[2]``."""
        self._seen.add(key)
        value = self.data.get(key)
        if value is None:
            if required:
                self.problem("required key is missing", key)
            return
        if not isinstance(value, list):
            self.problem(f"expected a list, got {type(value).__name__}", key)
            return
        for index, item in enumerate(value):
            yield Section(item, f"{self.key_path(key)}[{index}]", self.problems, self.prefix)

    def one_of(self, value: Any, choices: tuple[str, ...] | list[str], key: str) -> Any:
        if value is not None and value not in choices:
            self.problem(f"{value!r} is not one of {', '.join(choices)}", key)
            return None
        return value

    def finish(self, allowed_extra: tuple[str, ...] = ()) -> None:
        """Report every key that no reader asked for (a typo such as 'metdata')."""
        for key in self.data:
            if key not in self._seen and key not in allowed_extra:
                self.problem(f"unknown key {key!r}")


def options_problems(options: Any, path: str, reader: Callable[[Section], None]) -> list[str]:
    """Run ``reader`` over ``options`` at ``path`` and return its problems (for filters)."""
    problems: list[str] = []
    section = Section(options, path, problems)
    reader(section)
    section.finish()
    return problems
