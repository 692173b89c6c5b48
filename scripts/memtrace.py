"""Run ``python -m voicebot`` with tracemalloc on; each SIGUSR1 writes a snapshot (and glibc's heap figures).

    python scripts/memtrace.py OUT_DIR [voicebot args...]
    MEMTRACE_TRIM=1 python scripts/memtrace.py OUT_DIR   # no tracemalloc; each SIGUSR1 also calls malloc_trim(0)
    MEMTRACE_GARBAGE=1 python scripts/memtrace.py OUT_DIR  # no tracemalloc; each SIGUSR1 lists the cyclic garbage

Used by ``scripts/soak.py --tracemalloc``: the soak signals the server between rounds and compares the snapshots
(what Python objects the server still holds, by allocation site) with its RSS (what the process holds), so that
retained objects and allocator growth can be told apart. A diagnostic wrapper, not for production: tracemalloc
costs CPU and memory on every allocation.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import gc
import os
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

FRAMES = 4


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
    )]  # fmt: skip


def _mallinfo() -> dict[str, int]:
    """glibc's heap: bytes in use (``uordblks``), free inside the heap (``fordblks``), mmapped (``hblkhd``)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {name: int(getattr(info, name)) for name, _ in _MallInfo2._fields_}


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _pymalloc_stats() -> str:
    """The summary lines of ``sys._debugmallocstats()`` (pymalloc's arenas: allocated, in use, free blocks)."""
    import tempfile

    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        lines = tmp.read().decode(errors="replace").splitlines()
    keep = ("# arenas", "# bytes in", "Total", "# times")
    return "; ".join(" ".join(line.split()) for line in lines if line.startswith(keep))


def _mappings() -> str:
    """/proc/self/smaps_rollup, and the ten largest mappings by Rss (address range, Rss kB, what is mapped)."""
    rollup = " ".join(Path("/proc/self/smaps_rollup").read_text().split()[2:40])
    maps: list[tuple[int, str]] = []
    head = ""
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if not line[0].isupper():
            head = line
        elif line.startswith("Rss:"):
            maps.append((int(line.split()[1]), " ".join(head.split()[i] for i in (0, -1)) if head.split() else head))
    maps.sort(reverse=True)
    return f"rollup {rollup}; largest {maps[:10]}; mappings {len(maps)}"


def _garbage() -> str:
    """What only the cycle collector would free right now (objects in unreachable reference cycles), by type, with
    the bytes of their buffers: what a call leaves behind until the next full collection."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        found = gc.collect()
        objects = list(gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
    types = collections.Counter(type(o).__qualname__ for o in objects)
    sizes = collections.Counter()
    for o in objects:
        sizes[type(o).__qualname__] += sys.getsizeof(o)
    del objects
    total = sum(sizes.values())
    return f"cyclic garbage: {found} objects, {total} bytes; by type {types.most_common(30)}; " + (
        f"bytes by type {sizes.most_common(15)}\n"
    )


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    count = 0

    def dump(_sig: int, _frame: FrameType | None) -> None:
        nonlocal count
        text = _garbage() if garbage else ""
        gc.collect()
        text += f"rss_kib {_rss_kib()} mallinfo {_mallinfo()}\npymalloc {_pymalloc_stats()}\n{_mappings()}\n"
        if trim:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.malloc_trim(0)
            text += f"after malloc_trim(0): rss_kib {_rss_kib()} mallinfo {_mallinfo()}\n"
        elif not garbage:
            snap = tracemalloc.take_snapshot()
            snap.dump(str(out / f"snap-{count}.tracemalloc"))
            traced, peak = tracemalloc.get_traced_memory()
            types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
            text += f"traced {traced} peak {peak}\n"
            text += f"gc tracked {sum(types.values())} frozen {gc.get_freeze_count()} top {types.most_common(25)}\n"
        (out / f"snap-{count}.txt").write_text(text)
        count += 1

    trim = os.environ.get("MEMTRACE_TRIM") == "1"
    garbage = os.environ.get("MEMTRACE_GARBAGE") == "1"
    if not trim and not garbage:
        tracemalloc.start(FRAMES)
    signal.signal(signal.SIGUSR1, dump)
    sys.argv = ["voicebot", *sys.argv[2:]]
    runpy.run_module("voicebot", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
