"""Where metaproxy spends its time under load: py-spy when it is installed, cProfile otherwise.

py-spy samples the running process from outside, sees every greenlet's real
stack and leaves out samples where the process sits idle in the event loop,
so its "self" column is where the CPU went. cProfile runs inside the process
(bench/cprofile_proxy.py) and is the fallback; with greenlets switching under
it its cumulative column is muddled, but its own-time column still shows the
hot functions.
"""

from __future__ import annotations

import pstats
import re
import shutil
import subprocess
import sys
from collections import Counter
from io import StringIO
from pathlib import Path

_BENCH = Path(__file__).resolve().parent
_ROOT = _BENCH.parent
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")
#: Leaf frames where a thread blocks in C without py-spy noticing it is idle
#: (gevent's threadpool workers waiting for work): not CPU, left out.
_IDLE_LEAVES = frozenset({("acquire_with_timeout", "gevent/_threading.py")})


def pyspy_path() -> str | None:
    """The py-spy next to this interpreter (the venv's), else one on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    if local.exists():
        return str(local)
    return shutil.which("py-spy")


def start_pyspy(pid: int, seconds: float, out: Path, rate: int = 500) -> subprocess.Popen:
    """Sample ``pid`` for ``seconds`` into a raw (collapsed stacks) file; wait on the returned process."""
    exe = pyspy_path()
    if exe is None:
        raise RuntimeError("py-spy is not installed")
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
           "--format", "raw", "--nolineno", "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def cprofile_launcher(out: Path) -> list[str]:
    """A command prefix that runs ``metaproxy.cli`` under cProfile, writing stats to ``out`` at exit."""
    return [sys.executable, str(_BENCH / "cprofile_proxy.py"), str(out)]


def _short(path: str) -> str:
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1]
    try:
        return str(Path(path).resolve().relative_to(_ROOT))
    except (ValueError, OSError):
        return path


def _frame(raw: str) -> tuple[str, str]:
    m = _FRAME.match(raw.strip())
    if m is None:
        return raw.strip(), "?"
    return m.group("func"), _short(m.group("file"))


def summarize_pyspy(raw: Path, top: int = 15) -> str:
    """Own time and inclusive time per function, and own time per file, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    per_file: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        if frames[-1] in _IDLE_LEAVES:
            idle += n
            continue
        total += n
        func, file = frames[-1]
        own[f"{func} ({file})"] += n
        per_file[file] += n
        for name in {f"{fn} ({fl})" for fn, fl in frames}:
            inclusive[name] += n
    if total == 0:
        return "py-spy recorded no busy samples"

    def block(title: str, counter: Counter[str]) -> str:
        lines = [f"{title}:"]
        for name, n in counter.most_common(top):
            lines.append(f"  {100.0 * n / total:5.1f}%  {name}")
        return "\n".join(lines)

    return "\n\n".join([
        f"py-spy: {total} busy samples (idle event-loop waits and {idle} samples of idle"
        " threadpool workers excluded)",
        block("own time by function (where the CPU is spent)", own),
        block("inclusive time by function (what it is spent for)", inclusive),
        block("own time by file", per_file),
    ])


def summarize_cprofile(stats_path: Path, top: int = 20) -> str:
    out = StringIO()
    stats = pstats.Stats(str(stats_path), stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    return "cProfile, sorted by own time (tottime):\n" + out.getvalue()
