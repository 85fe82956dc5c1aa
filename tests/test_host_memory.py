"""rec_kd.train.host_memory: the restart under glibc malloc settings, and the page faults it saves."""

import json
import os
import subprocess
import sys

import pytest

from rec_kd.train import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ON_GLIBC = host_memory.platform.libc_ver()[0] == "glibc"

# A worker thread (as XLA's are) mallocs an 80 MB block, writes every page, frees it, and does it
# again; the child prints the minor page faults of the second round.
REUSE_PROBE = """
import ctypes, json, resource, threading
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 80 << 20
def fill_and_free():
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)
    libc.free(block)
faults = []
def worker():
    fill_and_free()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fill_and_free()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=worker)
thread.start()
thread.join()
print(json.dumps({"pages": SIZE // resource.getpagesize(), "second_round_faults": faults[0]}))
"""


def run_python(code: str, env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": ROOT}, capture_output=True, text=True, check=True)
    return result.stdout


def test_a_plain_glibc_environment_gets_the_tunables():
    assert host_memory.environment_with_tunables({"HOME": "/h"}, "glibc") == {"HOME": "/h", "GLIBC_TUNABLES": host_memory.TUNABLES}


def test_other_tunables_are_kept_and_ours_appended():
    env = host_memory.environment_with_tunables({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, "glibc")
    assert env == {"GLIBC_TUNABLES": "glibc.pthread.rseq=0:" + host_memory.TUNABLES}


@pytest.mark.parametrize(
    "environ, libc",
    [
        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}, "glibc"),  # the user's own malloc choice
        ({"GLIBC_TUNABLES": host_memory.TUNABLES}, "glibc"),  # already restarted
        ({"REC_KD_KEEP_FREED_MEMORY": "0"}, "glibc"),  # opted out
        ({}, ""),  # not glibc (macOS, musl)
    ],
)
def test_no_restart_when_set_opted_out_or_not_glibc(environ, libc):
    assert host_memory.environment_with_tunables(environ, libc) is None


@pytest.mark.parametrize(
    "jax_platforms, accelerator, restarts",
    [
        ("", False, True),  # CPU only: JAX runs on the CPU
        ("", True, False),  # a GPU/TPU plugin: JAX picks the accelerator
        ("cpu", True, True),  # ... unless asked for the CPU
        ("cuda,cpu", False, False),
    ],
)
def test_the_restart_is_for_runs_on_the_cpu_only(jax_platforms, accelerator, restarts):
    environ = {"JAX_PLATFORMS": jax_platforms} if jax_platforms else {}
    restarted = host_memory.environment_with_tunables(environ, "glibc", accelerator) is not None
    assert restarted == restarts


@pytest.mark.skipif(not ON_GLIBC, reason="glibc only")
def test_restart_reexecutes_the_same_command_once_under_the_tunables():
    code = (
        "from rec_kd.train import host_memory; host_memory.restart_with_tunables(); "
        "import os, sys; print(os.environ['GLIBC_TUNABLES'], sys.argv[1:])"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT)}
    result = subprocess.run(
        [sys.executable, "-c", code, "--flag=1"], env={**env, "PYTHONPATH": ROOT}, capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines() == [f"{host_memory.TUNABLES} ['--flag=1']"]


@pytest.mark.skipif(not ON_GLIBC, reason="glibc only")
def test_the_tunables_let_a_thread_reuse_a_freed_80mb_block_without_new_pages():
    plain = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT)}
    tuned = host_memory.environment_with_tunables(plain, "glibc")
    without = json.loads(run_python(REUSE_PROBE, plain))
    with_tunables = json.loads(run_python(REUSE_PROBE, tuned))
    # glibc's default: the block is mmapped anew and every page faults again.
    assert without["second_round_faults"] > without["pages"] // 2
    # With the tunables the freed block stays mapped: (almost) nothing faults.
    assert with_tunables["second_round_faults"] < with_tunables["pages"] // 100
