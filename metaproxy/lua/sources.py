"""Where a Lua filter's scripts come from, and how to tell that they changed.

A filter names one file (``script``), one inline text (``source``) or a folder
(``directory``: every ``*.lua`` in it, in name order). :func:`scan` returns a
cheap signature per file (mtime in ns, size, inode) so a poller can tell
changed, added and removed files apart with one ``stat`` each and no reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["SourceSpec", "Signature", "scan", "read_source"]

#: (st_mtime_ns, st_size, st_ino): changes when an editor saves or a deploy swaps a file.
Signature = tuple[int, int, int]


@dataclass(frozen=True)
class SourceSpec:
    """One filter's script origin; exactly one of the three is set."""

    script: str | None = None      # path as resolved against base_dir
    source: str | None = None      # inline Lua text
    directory: str | None = None   # folder of *.lua files
    label: str = ""                # how logs name the origin (the path as written in config)

    @property
    def watched(self) -> bool:
        return self.source is None


def _signature(path: str) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def scan(spec: SourceSpec) -> dict[str, tuple[str, Signature]]:
    """Script name -> (path, signature) for every file the spec covers right now.

    The name is what logs and counters use: the configured path for ``script``,
    ``<directory as written>/<file>`` for a folder. Missing files are absent.
    """
    if spec.script is not None:
        sig = _signature(spec.script)
        return {} if sig is None else {spec.label: (spec.script, sig)}
    if spec.directory is None:
        return {}
    found: dict[str, tuple[str, Signature]] = {}
    try:
        entries = sorted(os.scandir(spec.directory), key=lambda e: e.name)
    except OSError:
        return {}
    prefix = spec.label.rstrip("/")
    for entry in entries:
        if not entry.name.endswith(".lua") or entry.name.startswith("."):
            continue
        try:
            if not entry.is_file():
                continue
            st = entry.stat()
        except OSError:
            continue
        found[f"{prefix}/{entry.name}"] = (entry.path, (st.st_mtime_ns, st.st_size, st.st_ino))
    return found


def read_source(path: str) -> str:
    """The text of a script file; OSError or UnicodeDecodeError if it cannot be read."""
    with open(path, encoding="utf-8") as fh:
        return fh.read()
