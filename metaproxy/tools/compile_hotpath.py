"""``python -m metaproxy.tools.compile_hotpath``: compile the hot path's modules with mypyc.

Why: a proxied request is ~105,000 instructions of interpreted Python on
CPython 3.11; the same modules compiled with mypyc execute about a third
fewer (docs/performance.md, "The hot path compiled"). The sources stay the
only source: the compiled modules are a cache of them, built here, kept in
``metaproxy/_compiled/`` (never committed, never beside the ``.py`` files so
they can never shadow an edited source) and used by :mod:`metaproxy.compiled`
only while every source they were built from is unchanged.

The modules are compiled together, as one mypyc group: calls between them are
then direct C calls. Compiled alone, each saves little (interpreted callers
pay more to reach compiled code).

How: the sources are copied into a staging tree where the ``codecs/`` folder
is named for its import package ``metaproxy_codecs`` (mypy names a module by
its folders), mypyc type-checks and translates them there, and setuptools
compiles the C into the output folder with a manifest of the sources' hashes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

#: The modules on a request's way, compiled together (import names).
HOT_MODULES: tuple[str, ...] = (
    "metaproxy.message",
    "metaproxy.codec",
    "metaproxy.chain",
    "metaproxy.netio",
    "metaproxy.downstream",
    "metaproxy.evented",
    "metaproxy.router",
    "metaproxy.filters.router",
    "metaproxy.upstream.cluster",
    "metaproxy.upstream.lb",
    "metaproxy.upstream.pool",
    "metaproxy.stats",
    "metaproxy_codecs.tinyrpc.codec",
    "metaproxy_codecs.thrift.binary",
    "metaproxy_codecs.thrift.codec",
    "metaproxy_codecs.dubbo.hessian2",
    "metaproxy_codecs.dubbo.codec",
    # The WASM filter's host (docs/wasm.md, "Cost"): its per-request Python runs compiled.
    "metaproxy.wasm.native",
    "metaproxy.wasm.host",
    "metaproxy.wasm.vm",
    "metaproxy.wasm.filter",
)

#: The mypyc group's name: its shared library is the top-level module ``GROUP__mypyc``.
GROUP = "metaproxy_hot"

ROOT = Path(__file__).resolve().parents[2]
#: Import package -> its folder in the repository.
PACKAGE_DIRS = {"metaproxy": ROOT / "metaproxy", "metaproxy_codecs": ROOT / "codecs"}
DEFAULT_OUT = ROOT / "metaproxy" / "_compiled"

MYPY_FLAGS = ("--ignore-missing-imports", "--follow-imports=silent", "--python-version=3.11")


def source_path(module: str, package_dirs: dict[str, Path] = PACKAGE_DIRS) -> Path:
    """The ``.py`` file of ``module`` (a hot module is never a package ``__init__``)."""
    top, _, rest = module.partition(".")
    return package_dirs[top].joinpath(*rest.split(".")).with_suffix(".py")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stage(staging: Path) -> None:
    """Copy both packages' Python files into ``staging`` under their import names."""
    if staging.exists():
        shutil.rmtree(staging)
    for top, folder in PACKAGE_DIRS.items():
        for src in folder.rglob("*.py"):
            rel = src.relative_to(folder)
            if rel.parts[0] in ("_compiled",) or "__pycache__" in rel.parts:
                continue
            dst = staging / top / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        (staging / top / "py.typed").touch()


def build(out: Path, jobs: int = 2, opt_level: str = "3") -> dict:
    """Compile :data:`HOT_MODULES` into ``out``; returns the manifest written there."""
    from mypyc.build import mypycify  # the build needs mypy; the proxy does not
    from setuptools import Distribution

    started = time.monotonic()
    work = ROOT / "build" / "mypyc"
    staging = work / "src"
    _stage(staging)
    hashes = {m: digest(source_path(m)) for m in HOT_MODULES}
    paths = [str(source_path(m, {t: Path(t) for t in PACKAGE_DIRS})) for m in HOT_MODULES]
    lib_dir = work / "lib"
    if lib_dir.exists():
        shutil.rmtree(lib_dir)
    cwd = os.getcwd()
    os.chdir(staging)
    try:
        extensions = mypycify(
            [*MYPY_FLAGS, *paths],
            opt_level=opt_level,
            group_name=GROUP,
            multi_file=True,
            target_dir=str(work / "c"),
        )
        dist = Distribution({"name": GROUP, "ext_modules": extensions})
        cmd = dist.get_command_obj("build_ext")
        cmd.build_lib = str(lib_dir)
        cmd.build_temp = str(work / "temp")
        cmd.parallel = jobs
        cmd.ensure_finalized()
        cmd.run()
    finally:
        os.chdir(cwd)
    # Install: every built library into ``out``, flat, named by its module; the manifest last,
    # so a half-written folder is never taken for a build.
    tmp_out = out.with_name(out.name + ".tmp")
    if tmp_out.exists():
        shutil.rmtree(tmp_out)
    tmp_out.mkdir(parents=True)
    libraries: dict[str, str] = {}
    for lib in lib_dir.rglob("*.so"):
        rel = lib.relative_to(lib_dir)
        module = ".".join((*rel.parts[:-1], rel.name.split(".", 1)[0]))
        name = module + ".so"
        shutil.copy2(lib, tmp_out / name)
        libraries[module] = name
    missing = [m for m in HOT_MODULES if m not in libraries]
    if missing:
        raise SystemExit(f"compile_hotpath: no library built for {', '.join(missing)}")
    manifest = {
        "python": sys.implementation.cache_tag,
        "group": GROUP + "__mypyc",
        "modules": hashes,
        "libraries": libraries,
        "seconds": round(time.monotonic() - started, 1),
    }
    (tmp_out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp_out.rename(out)
    return manifest


def up_to_date(out: Path) -> bool:
    """Whether ``out`` holds a build of exactly today's :data:`HOT_MODULES` sources, for this Python."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return (manifest.get("python") == sys.implementation.cache_tag
            and manifest.get("modules") == {m: digest(source_path(m)) for m in HOT_MODULES}
            and all((out / name).is_file() for name in manifest.get("libraries", {}).values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--opt-level", default="3")
    parser.add_argument("--if-stale", action="store_true",
                        help="build only when a source changed since the last build (what `make compiled` runs)")
    args = parser.parse_args(argv)
    if args.if_stale and up_to_date(args.out):
        return 0
    manifest = build(args.out, args.jobs, args.opt_level)
    print(f"compiled {len(manifest['modules'])} modules into {args.out} in {manifest['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
