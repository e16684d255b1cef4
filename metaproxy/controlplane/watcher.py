"""Watch route files for changes by polling their stat, and debounce bursts.

Polling (not inotify) keeps this dependency-free and works on every
filesystem; a stat of a few dozen files every ``poll`` seconds costs little.
An editor's save is often several writes (truncate, write, rename): the
callback runs once the files have stayed unchanged for ``debounce`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger("metaproxy.controlplane.watcher")

Signature = tuple[tuple[str, int, int, int], ...]


def route_files(paths: Iterable[str | Path]) -> list[Path]:
    """The YAML files named by ``paths``: files as given, folders searched recursively, sorted."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
                              and not any(part.startswith(".") for part in p.relative_to(path).parts)))
        else:
            out.append(path)
    return out


def signature(paths: Iterable[str | Path]) -> Signature:
    """What changes when a file is added, removed or written: (path, inode, mtime_ns, size) of each.

    The inode catches an editor's write-and-rename that keeps size and (coarse) mtime.
    """
    items = []
    for path in route_files(paths):
        try:
            st = path.stat()
            items.append((str(path), st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            items.append((str(path), -1, -1, -1))
    return tuple(items)


class FileWatcher:
    """Calls ``on_change()`` (from its own thread) after the watched files change and settle."""

    def __init__(self, paths: list[str], on_change: Callable[[], None],
                 poll: float = 0.02, debounce: float = 0.05) -> None:
        self.paths = paths
        self.on_change = on_change
        self.poll = poll
        self.debounce = debounce
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = signature(paths)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="route-file-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            current = signature(self.paths)
            if current == self._last:
                continue
            # Wait for the files to settle: no change for ``debounce`` seconds.
            settled_at = time.monotonic()
            while not self._stop.wait(min(self.poll, self.debounce)):
                again = signature(self.paths)
                if again != current:
                    current, settled_at = again, time.monotonic()
                elif time.monotonic() - settled_at >= self.debounce:
                    break
            self._last = current
            try:
                self.on_change()
            except Exception:  # a reload bug must not stop the watching
                log.exception("reloading route files failed")
