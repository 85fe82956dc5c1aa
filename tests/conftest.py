"""Shared pytest fixtures.

The real benchmark files are not part of a clone: a user's clone has no ../shared/data, and the
tests that read them skip, saying how to point them at the data. CI sets REC_KD_REQUIRE_DATA=1, so
there a missing data folder fails those tests instead of skipping them: coverage cannot vanish
silently. Everything else (MovieLens-100k from the RecBole wheel, fixtures, synthetic data) runs
everywhere.
"""

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import filelock
import pytest

REPO = Path(__file__).resolve().parents[1]
# One persistent XLA compilation cache for the whole suite: this process (the in-process trainings
# of test_members, test_refit_protocol, test_codes, ...) and every rec_kd.main, sweep and launcher
# subprocess, which inherit the environment. Most tests compile the same smoke programs again;
# a cache hit returns the very executable the first compile made, so no number changes (a fresh
# clone starts with an empty cache, as CI does). Set here, before any test module imports jax,
# which reads these at import; a value already in the environment wins.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def missing_data_message(path: str) -> str:
    return (
        f"benchmark data not found at {path}: set REC_KD_DATA_DIR to the folder holding tmall/, retailrocket/, "
        "yoochoose1_64/ and amazon_beauty_5core/ (docs/data.md)"
    )


def benchmark_data_path() -> str:
    """Where the real benchmark folder should be: $REC_KD_DATA_DIR, else the shared/data folder beside the repo."""
    return os.environ.get("REC_KD_DATA_DIR", str(REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> str:
    """The real benchmark folder (benchmark_data_path).

    Missing: the test skips, or fails when REC_KD_REQUIRE_DATA=1 (CI).
    """
    path = benchmark_data_path()
    if not os.path.isdir(path):
        if os.environ.get("REC_KD_REQUIRE_DATA") == "1":
            pytest.fail(missing_data_message(path) + "; REC_KD_REQUIRE_DATA=1 makes this a failure")
        pytest.skip(missing_data_message(path))
    return path


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs of the real trainer (CI runs them too)")


@pytest.fixture(scope="session")
def built_once(tmp_path_factory) -> Callable[[str, Callable[[Path], object]], Path]:
    """built_once(name, build) -> the folder `build(folder)` filled, once for the whole test session.

    Many test files only need *a* trained smoke run (a teacher to distil from, a student to export).
    Under pytest-xdist each worker is its own process with its own session fixtures, so the folder
    lives where every worker of this session looks (the workers' shared temporary parent), and a
    file lock makes the first worker build while the others wait and then reuse it. A failed build
    leaves no "built" mark, so the next test to ask builds again from an empty folder, and fails as
    loudly. Whoever uses a shared run only reads it.
    """
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "built_once"
    root.mkdir(exist_ok=True)

    def get(name: str, build: Callable[[Path], object]) -> Path:
        folder, built = root / name, root / f"{name}.built"
        with filelock.FileLock(str(root / f"{name}.lock")):
            if not built.exists():
                shutil.rmtree(folder, ignore_errors=True)
                build(folder)
                built.touch()
        return folder

    return get


@pytest.fixture(scope="session")
def ml100k_teacher(built_once) -> Path:
    """The small MovieLens-100k smoke teacher (tests/test_core_ml100k.py's SMALL settings), trained once."""
    from tests.test_core_ml100k import run_ml100k

    return built_once("ml100k_teacher", lambda workdir: run_ml100k("teacher,smoke", workdir))


@pytest.fixture(scope="session")
def ml100k_student(built_once, ml100k_teacher) -> Path:
    """The small MovieLens-100k smoke student (main STTD table, full objective) of that teacher, trained once."""
    from tests.test_core_ml100k import run_ml100k

    return built_once("ml100k_student", lambda workdir: run_ml100k("student,smoke", workdir, f"--config.teacher_workdir={ml100k_teacher}"))


@pytest.fixture(scope="session")  # session: set up before, and so skipping, the module's trained fixtures
def unless_checked_on_tmall():
    """Skips a MovieLens-100k test whose guarantee a Tmall twin checks (tests/test_train.py, or
    tests/test_launch.py for the grid), where Tmall is here.

    A user's clone has no benchmark files, so there the ml-100k twin checks the guarantee; with the
    files (CI: REC_KD_REQUIRE_DATA=1 makes them required) the Tmall test does, on the real
    catalogue, and checking it twice would only cost the suite's time.
    """
    if os.path.isdir(os.path.join(benchmark_data_path(), "tmall")):
        pytest.skip("checked on Tmall by its twin (tests/test_train.py, tests/test_launch.py)")
