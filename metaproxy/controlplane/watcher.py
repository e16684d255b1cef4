"""Watch route files for changes and debounce bursts: inotify on Linux, polling elsewhere.

Both watchers call ``on_change(paths)`` from their own thread (a greenlet
under gevent) with the route files that changed, once a burst of changes
has settled. An editor's save is often several steps (write a temporary
file and rename it over the old one, or rename the old one away and write
a new one; ``git checkout`` writes many files): the callback runs once no
step has happened for ``debounce`` seconds.

:class:`InotifyWatcher` is told of a change by the kernel at once, so its
debounce can be short (10 ms by default): each step of a save reaches it
within microseconds of the previous one, and it also knows when a file is
still being written (modified but not yet closed) and waits for the close.
A route file that disappears is given ``removal_grace`` (100 ms) to come
back before its removal is published, because "rename the old file away,
write the new one" must not withdraw routes from every proxy in between.
Events on hidden directories or symlinks (Kubernetes swaps a ConfigMap
volume's ``..data`` symlink) make it look at every file again.

:class:`PollWatcher` compares (inode, mtime, size) of every file every
``poll`` seconds: it works on any filesystem (network mounts included), at
the cost of up to ``poll`` of delay. It is used where inotify is not
available, or when asked for (``--watcher poll``).
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from metaproxy.controlplane import inotify

log = logging.getLogger("metaproxy.controlplane.watcher")

Signature = tuple[tuple[str, int, int, int], ...]
OnChange = Callable[[set[str]], None]
_SUFFIXES = (".yaml", ".yml")


def route_files(paths: Iterable[str | Path]) -> list[Path]:
    """The YAML files named by ``paths``: files as given, folders searched recursively, sorted."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.suffix in _SUFFIXES and p.is_file()
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


class _Watcher:
    """The thread both watchers share."""

    kind = ""

    def __init__(self, paths: list[str], on_change: OnChange) -> None:
        self.paths = paths
        self.on_change = on_change
        self.changes = 0  # callbacks made (tests wait on it)
        self.last_settle_ms = 0.0  # first sign of the last burst -> callback (the debounce, mostly)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"route-file-watcher-{self.kind}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(5)
        else:
            self.close()

    def close(self) -> None:
        pass

    def _wake(self) -> None:
        pass

    def _run(self) -> None:
        raise NotImplementedError

    def _notify(self, changed: set[str], began: float) -> None:
        self.changes += 1
        self.last_settle_ms = (time.monotonic() - began) * 1000
        try:
            self.on_change(changed)
        except Exception:  # a reload bug must not stop the watching
            log.exception("reloading route files failed")


class PollWatcher(_Watcher):
    """Polls the files' stat every ``poll`` seconds; calls back once they have not changed for ``debounce``."""

    kind = "poll"

    def __init__(self, paths: list[str], on_change: OnChange, poll: float = 0.02, debounce: float = 0.03) -> None:
        super().__init__(paths, on_change)
        self.poll = poll
        self.debounce = debounce
        self._last = signature(paths)

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            current = signature(self.paths)
            if current == self._last:
                continue
            # Wait for the files to settle: no change for ``debounce`` seconds.
            seen_at = settled_at = time.monotonic()
            while not self._stop.wait(min(self.poll, self.debounce)):
                again = signature(self.paths)
                if again != current:
                    current, settled_at = again, time.monotonic()
                elif time.monotonic() - settled_at >= self.debounce:
                    break
            changed = set(current) ^ set(self._last)
            self._last = current
            self._notify({item[0] for item in changed}, seen_at)


#: Kept for code that imported the poll watcher by its old name.
FileWatcher = PollWatcher

_DIR_MASK = (inotify.IN_CREATE | inotify.IN_DELETE | inotify.IN_MODIFY | inotify.IN_CLOSE_WRITE
             | inotify.IN_MOVED_FROM | inotify.IN_MOVED_TO | inotify.IN_ATTRIB | inotify.IN_DELETE_SELF
             | inotify.IN_MOVE_SELF | inotify.IN_ONLYDIR | inotify.IN_EXCL_UNLINK)
_GONE = inotify.IN_DELETE | inotify.IN_MOVED_FROM
_ARRIVED = inotify.IN_CREATE | inotify.IN_MOVED_TO
_STRUCTURE = _GONE | _ARRIVED


class InotifyWatcher(_Watcher):
    """Watches the folders (recursively) and the parents of single files with inotify.

    Raises OSError at construction if inotify cannot be used (not Linux, or
    out of instances or watches): :func:`make_watcher` then falls back to polling.
    """

    kind = "inotify"

    def __init__(self, paths: list[str], on_change: OnChange, debounce: float = 0.01,
                 removal_grace: float = 0.1, max_wait: float = 2.0) -> None:
        super().__init__(paths, on_change)
        self.debounce = debounce
        self.removal_grace = max(removal_grace, debounce)
        self.max_wait = max(max_wait, self.removal_grace)
        self._ino = inotify.Inotify()
        self._wake_r, self._wake_w = os.pipe()
        self._dirs: dict[int, Path] = {}            # watch descriptor -> folder
        self._roots: dict[Path, bool] = {}          # watched folder -> recursive (a --config-dir)
        self._files: dict[Path, set[str]] = {}      # folder of a --file -> names watched in it
        try:
            for raw in paths:
                path = Path(raw)
                if path.is_dir():
                    self._roots[path] = True
                    self._watch_tree(path)
                else:  # a single file: watch its folder, so a rename onto it is seen
                    parent = path.parent
                    self._files.setdefault(parent, set()).add(path.name)
                    self._roots.setdefault(parent, False)
                    self._add(parent)
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        self._ino.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # -- watches -----------------------------------------------------------------
    def _add(self, folder: Path) -> None:
        wd = self._ino.add_watch(str(folder), _DIR_MASK)
        self._dirs[wd] = folder

    def _watch_tree(self, folder: Path) -> None:
        """``folder`` and every folder under it that route_files would search (not hidden ones)."""
        self._add(folder)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                self._watch_tree(folder / entry.name)

    def _recursive(self, folder: Path) -> bool:
        """Whether ``folder`` is (under) a --config-dir, so all its route files and subfolders count."""
        return any(recursive and (root == folder or root in folder.parents) for root, recursive in self._roots.items())

    # -- events ------------------------------------------------------------------
    def _classify(self, event: inotify.Event, state: _Burst) -> None:
        """Fold one event into the burst being collected."""
        if event.mask & inotify.IN_Q_OVERFLOW:
            state.touch_all()  # events were lost: look at every file
            return
        folder = self._dirs.get(event.wd)
        if folder is None:
            return
        if event.mask & inotify.IN_IGNORED:  # the watch is gone (its folder was removed)
            del self._dirs[event.wd]
            return
        if event.mask & (inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF):
            if folder in self._roots:
                log.warning("watched folder %s was removed or moved: looking at every file", folder)
            state.touch_all()
            return
        if not event.name:
            return
        path = folder / event.name
        if event.name.startswith("."):
            # Kubernetes' atomic writer swaps hidden directories and the ``..data`` symlink:
            # the visible files are symlinks into them and change without an event of their own.
            if event.mask & _STRUCTURE and (event.mask & inotify.IN_ISDIR or os.path.islink(path)):
                state.touch_all()
            return
        if event.mask & inotify.IN_ISDIR:
            if not self._recursive(folder):
                return
            if event.mask & _ARRIVED:
                try:
                    self._watch_tree(path)
                except OSError as exc:
                    log.warning("cannot watch %s: %s", path, exc)
            state.touch_all()  # files may have come or gone with the folder
            return
        if path.suffix not in _SUFFIXES:
            return
        if folder in self._files and event.name not in self._files[folder] and not self._recursive(folder):
            return
        key = str(path)
        state.touched(key)
        if event.mask & (inotify.IN_MODIFY | inotify.IN_CREATE):
            state.writing.add(key)
        if event.mask & (inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_TO | _GONE):
            state.writing.discard(key)
        if event.mask & _GONE:
            state.gone[key] = time.monotonic()
        elif event.mask & _ARRIVED:
            state.gone.pop(key, None)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._ino.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while not self._stop.is_set():
                poller.poll()  # block until the first event of a burst (or stop)
                if self._stop.is_set():
                    return
                burst = _Burst()
                began = time.monotonic()
                for event in self._ino.read():
                    self._classify(event, burst)
                if not burst.active:
                    continue
                self._settle(poller, burst)
                if self._stop.is_set():
                    return
                changed = burst.changed
                if burst.everything:
                    changed = changed | {str(p) for p in route_files(self.paths)}
                self._notify(changed, began)
        finally:
            self.close()

    def _settle(self, poller: select.poll, burst: _Burst) -> None:
        """Keep collecting until the burst is quiet; see the module docstring for the rules."""
        began = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            wait = burst.last + self.debounce - now
            if wait <= 0 and now - began < self.max_wait:
                if burst.writing:  # a file is open for writing: wait for its close
                    wait = self.debounce
                else:
                    missing = [t for k, t in burst.gone.items() if not os.path.exists(k)]
                    if missing:
                        wait = max(missing) + self.removal_grace - now
            if wait <= 0 or now - began >= self.max_wait:
                return
            if poller.poll(max(1, int(wait * 1000) + 1)):
                for event in self._ino.read():
                    self._classify(event, burst)


class _Burst:
    """The changes collected since the first event of a burst."""

    def __init__(self) -> None:
        self.changed: set[str] = set()
        self.writing: set[str] = set()
        self.gone: dict[str, float] = {}
        self.everything = False
        self.last = time.monotonic()
        self._active = False

    @property
    def active(self) -> bool:
        return self._active or self.everything

    def touch_all(self) -> None:
        self.everything = True
        self.last = time.monotonic()

    def touched(self, key: str) -> None:
        self.changed.add(key)
        self.last = time.monotonic()
        self._active = True


def make_watcher(paths: list[str], on_change: OnChange, kind: str = "auto", *, poll: float = 0.02,
                 debounce: float = 0.01, removal_grace: float = 0.1) -> _Watcher:
    """The watcher to use: ``inotify``, ``poll``, or ``auto`` (inotify if it works here, else poll)."""
    if kind not in ("auto", "inotify", "poll"):
        raise ValueError(f"watcher must be auto, inotify or poll, not {kind!r}")
    if kind != "poll":
        try:
            return InotifyWatcher(paths, on_change, debounce=debounce, removal_grace=removal_grace)
        except OSError as exc:
            if kind == "inotify":
                raise
            log.warning("inotify cannot be used (%s): polling the route files every %.0f ms", exc, poll * 1000)
    return PollWatcher(paths, on_change, poll=poll, debounce=debounce)
