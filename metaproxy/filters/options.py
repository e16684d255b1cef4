"""Reading a built-in filter's options: one place for the ValueError shape build_chain expects.

Filters validate their options once, in ``__init__``, through a
:class:`~metaproxy.settings.Section`; the first problem becomes
``ValueError("key.path: problem")`` and the listener prefixes the filter's
own config path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from metaproxy.settings import Section, options_problems


def read_options(options: Mapping[str, Any], reader: Callable[[Section], None]) -> None:
    """Run ``reader`` over a filter's options; raise ValueError("key.path: problem") on the first problem."""
    problems = options_problems(dict(options), "", reader)
    if problems:
        extra = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(problems[0] + extra)


def percentage(value: Any) -> float:
    """A share in percent, 0-100 (a ``check`` for Section.take)."""
    if not 0 <= value <= 100:
        raise ValueError("must be between 0 and 100")
    return float(value)


def positive(value: Any) -> Any:
    """A number greater than 0 (a ``check`` for Section.take)."""
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value
