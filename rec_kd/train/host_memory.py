"""Run the CPU train step on reused memory: restart the process with glibc malloc settings that keep XLA's freed buffers.

Why: on the CPU backend, every call of a jitted step allocates its temporaries (one block of
~75 MB for the Tmall teacher at batch 100) with posix_memalign from an XLA worker thread, and
frees them when the call ends. Under glibc's defaults such a thread allocates from a per-thread
arena whose heaps hold at most 64 MB, so the block falls through to a fresh mmap, and free()
unmaps it. Every step then faults in ~20,000 new pages that the kernel must zero: about a third
of the teacher step's CPU time at batch 100 (docs/performance.md, "Page faults").

TUNABLES asks glibc for:
- one arena for every thread (arena_max=1): its heap grows without the 64 MB limit;
- no mmap for large blocks (mmap_max=0), so they come from that heap;
- no trimming of the heap's top (trim_threshold=4 GiB), so a freed block stays mapped and the next
  step's request reuses its pages;
- transparent huge pages for the heap where the kernel allows them (hugetlb=1, glibc >= 2.35), so
  the pages the heap does add fault in 2 MB at a time.
The arithmetic is untouched; only where buffers live changes. The cost is that the process keeps
its high-water mark of temporaries mapped, and one heap fragments where many mmaps did not:
measured peak RSS +15% for the teacher and student at batch 100 in one process, +78% for
launch.bench's six programs up to batch 1,024 (docs/performance.md).

glibc reads GLIBC_TUNABLES only when a process starts, and calling mallopt(3) later does not move
threads off the arenas they already use. So the entry points (rec_kd.main, launch.bench,
launch.studies.profile_step, launch.studies.bench_torch) call `restart_with_tunables()` first:
it re-executes the same command once with TUNABLES added. Set
REC_KD_KEEP_FREED_MEMORY=0 to opt out; a GLIBC_TUNABLES that already sets any glibc.malloc option
is left as the user wrote it. Elsewhere than glibc (macOS, musl) nothing happens, and neither does
it where JAX will pick an accelerator (a PJRT plugin or libtpu is installed and JAX_PLATFORMS does
not ask for the CPU): there the step's memory is on the device, and one arena for the host's many
runtime threads is a contention we have not measured.
"""

import importlib.util
import os
import platform
import sys
from importlib import metadata

TUNABLES = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296:glibc.malloc.hugetlb=1"
OPT_OUT = "REC_KD_KEEP_FREED_MEMORY"


def accelerator_installed() -> bool:
    """Whether JAX could find a GPU or TPU backend here (without starting JAX): a PJRT plugin or libtpu."""
    return bool(metadata.entry_points(group="jax_plugins")) or importlib.util.find_spec("libtpu") is not None


def runs_on_cpu(environ: dict[str, str], accelerator: bool) -> bool:
    """Whether JAX's default backend will be the CPU: JAX_PLATFORMS's first entry, else no accelerator installed."""
    platforms = environ.get("JAX_PLATFORMS", "")
    return platforms.split(",")[0] == "cpu" if platforms else not accelerator


def environment_with_tunables(environ: dict[str, str], libc: str, accelerator: bool = False) -> dict[str, str] | None:
    """The environment to restart with, or None when this process should run as it is."""
    if libc != "glibc" or environ.get(OPT_OUT, "1") == "0" or not runs_on_cpu(environ, accelerator):
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc." in current:  # already ours (after the restart), or the user's own choice
        return None
    return {**environ, "GLIBC_TUNABLES": f"{current}:{TUNABLES}" if current else TUNABLES}


def restart_with_tunables() -> None:
    """Re-executes this Python command (same interpreter, same arguments) under TUNABLES, when it should."""
    environ = environment_with_tunables(dict(os.environ), platform.libc_ver()[0], accelerator_installed())
    if environ is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, environ)
