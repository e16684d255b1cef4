"""Use the hot path's mypyc-compiled modules when they are there and match their sources.

``python -m metaproxy.tools.compile_hotpath`` (``make compiled``, which ``make
run``, ``make test`` and ``make bench`` do first) builds them into
``metaproxy/_compiled/`` with a manifest of the hashes of the sources they
were made from. At ``import metaproxy`` this module checks those hashes
against the ``.py`` files and, when every one matches, puts a finder in front
of ``sys.meta_path`` that loads those modules from the compiled libraries.
When any source differs (someone edited it), none is used: a compiled
module calls the others of its group directly, so one stale module would
run old code behind a fresh one. Then everything runs as plain Python, as
it always can.

``METAPROXY_COMPILED``: ``0`` never uses them; ``require`` fails the import
when they cannot be used (benchmarks and CI, which must measure and test
what ships); unset or anything else: use them when they can be used.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["STATE", "install"]

FOLDER = Path(__file__).resolve().parent / "_compiled"

#: What :func:`install` found: ``{"mode": "compiled" | "interpreted", "reason": ..., "modules": [...]}``.
#: Shown by ``/config_dump`` and logged at start.
STATE: dict[str, Any] = {"mode": "interpreted", "reason": "not checked", "modules": []}


class CompiledUnavailable(ImportError):
    """``METAPROXY_COMPILED=require`` and the compiled modules cannot be used."""


class _Finder:
    """A meta path finder for exactly the modules of one compiled build."""

    def __init__(self, libraries: dict[str, Path]) -> None:
        self.libraries = libraries

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        library = self.libraries.get(fullname)
        if library is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(library))
        return importlib.util.spec_from_file_location(fullname, str(library), loader=loader)


def _package_dir(top: str) -> Path | None:
    if top == "metaproxy":
        return Path(__file__).resolve().parent
    spec = importlib.util.find_spec(top)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _source(module: str, dirs: dict[str, Path | None]) -> Path | None:
    top, _, rest = module.partition(".")
    base = dirs.get(top)
    if base is None:
        return None
    return base.joinpath(*rest.split(".")).with_suffix(".py")


def _check(folder: Path) -> tuple[dict[str, Path] | None, str, list[str]]:
    """The libraries to load, or None and why not."""
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        return None, "not built (make compiled)", []
    try:
        manifest = json.loads(manifest_path.read_text())
        hashes: dict[str, str] = manifest["modules"]
        libraries: dict[str, str] = manifest["libraries"]
        group: str = manifest["group"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable manifest: {exc}", []
    if manifest.get("python") != sys.implementation.cache_tag:
        return None, f"built for {manifest.get('python')}, this is {sys.implementation.cache_tag}", []
    modules = sorted(hashes)
    dirs = {top: _package_dir(top) for top in {m.partition(".")[0] for m in modules}}
    stale = []
    for module, expected in hashes.items():
        src = _source(module, dirs)
        try:
            actual = hashlib.sha256(src.read_bytes()).hexdigest() if src else ""
        except OSError:
            actual = ""
        if actual != expected:
            stale.append(module)
    if stale:
        return None, "sources changed since the build: " + ", ".join(sorted(stale)), modules
    found = {name: folder / file for name, file in libraries.items()}
    if group not in found or any(not p.is_file() for p in found.values()):
        return None, "a compiled library is missing", modules
    already = [m for m in modules if m in sys.modules]
    if already:
        return None, "imported before metaproxy: " + ", ".join(already), modules
    return found, "", modules


def install(folder: Path = FOLDER) -> dict[str, Any]:
    """Put the compiled modules' finder in place when they can be used; say what was decided."""
    setting = os.environ.get("METAPROXY_COMPILED", "").strip().lower()
    if setting == "0":
        STATE.update(mode="interpreted", reason="METAPROXY_COMPILED=0", modules=[])
        return STATE
    libraries, reason, modules = _check(folder)
    if libraries is None:
        STATE.update(mode="interpreted", reason=reason, modules=modules)
        if setting == "require":
            raise CompiledUnavailable(f"METAPROXY_COMPILED=require, but the compiled hot path is unusable: {reason}")
        return STATE
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder(libraries))
    STATE.update(mode="compiled", reason="", modules=modules)
    return STATE
