"""Sweeps: a sweep file expands into runs; runs become commands, vectorised groups, or a job script.

A sweep file is a Python file whose `get_sweep()` returns a dict:

  config   'configs/NAME.py:ARGS', as for `rec_kd.main --config` (relative to the repository).
  base     {dotted field: value} applied to every run (optional).
  product  {dotted field: [values]}: every combination (optional).
  zip      {dotted field: [values]} with lists of one length: walked together, crossed with the
           product (optional).

`seed` is a field like any other. Each run gets a stable name made of its swept values (e.g.
`seed=1,train.learning_rate=0.003`) and the workdir ROOT/NAME. A run is finished when its
workdir holds results.json; rerunning a sweep skips finished runs, and an interrupted run resumes
from its checkpoint because `rec_kd.main` does.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from absl import logging

from rec_kd import data as data_lib
from rec_kd.experiments import runs
from rec_kd.train import members

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class SweepError(ValueError):
    """A sweep file that cannot be expanded; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Sweep:
    path: str
    config: str  # 'configs/NAME.py:ARGS'
    base: dict
    product: dict
    zip: dict


@dataclasses.dataclass(frozen=True)
class SweepRun:
    name: str
    overrides: dict  # dotted field -> value: base, then this run's swept values
    swept: dict  # only the swept values (what the name is made of)


def load_module(path: str, what: str):
    if not os.path.isfile(path):
        raise SweepError(f"{path}: no such {what} file")
    spec = importlib.util.spec_from_file_location(f"_rec_kd_{what}_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise SweepError(f"{path}: cannot be loaded ({type(error).__name__}: {error})") from None
    return module


def required_env(name: str, sweep_file: str, what: str) -> str:
    """A value a sweep file reads from the environment: a path that differs between machines, such
    as the teacher workdir its students distil from. Unset is a SweepError naming the file and the variable."""
    value = os.environ.get(name, "")
    if not value:
        raise SweepError(f"{sweep_file}: set {name} to {what}")
    return value


def load_sweep(path: str) -> Sweep:
    module = load_module(path, "sweep")
    if not hasattr(module, "get_sweep"):
        raise SweepError(f"{path}: defines no get_sweep()")
    spec = module.get_sweep()
    if not isinstance(spec, dict) or "config" not in spec:
        raise SweepError(f"{path}: get_sweep() must return a dict with a 'config' entry, got {type(spec).__name__}")
    unknown = set(spec) - {"config", "base", "product", "zip"}
    if unknown:
        raise SweepError(f"{path}: unknown sweep entries {sorted(unknown)}; expected config, base, product, zip")
    sweep = Sweep(path, spec["config"], dict(spec.get("base", {})), dict(spec.get("product", {})), dict(spec.get("zip", {})))
    for entry in ("product", "zip"):
        for field, values in getattr(sweep, entry).items():
            if not isinstance(values, (list, tuple)) or not values:
                raise SweepError(f"{path}: {entry}[{field!r}] must be a non-empty list of values")
    if len({len(values) for values in sweep.zip.values()}) > 1:
        raise SweepError(f"{path}: zip lists differ in length: { {f: len(v) for f, v in sweep.zip.items()} }")
    shared = set(sweep.product) & set(sweep.zip)
    if shared:
        raise SweepError(f"{path}: fields both in product and zip: {sorted(shared)}")
    return sweep


def format_value(value: Any) -> str:
    """A value as it appears in run names and in `--config.FIELD=VALUE` flags."""
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def expand(sweep: Sweep) -> list[SweepRun]:
    """Every run of the sweep, in a stable order (product fields in file order, then zip)."""
    product_fields = list(sweep.product)
    zip_fields = list(sweep.zip)
    zipped = list(zip(*sweep.zip.values(), strict=True)) if zip_fields else [()]
    runs = []
    for product_values in itertools.product(*sweep.product.values()):
        for zip_values in zipped:
            swept = dict(zip(product_fields + zip_fields, product_values + tuple(zip_values), strict=True))
            name = ",".join(f"{field}={format_value(value)}" for field, value in swept.items()) or "base"
            runs.append(SweepRun(name.replace("/", "_"), {**sweep.base, **swept}, swept))
    if len({run.name for run in runs}) != len(runs):
        raise SweepError(f"{sweep.path}: the sweep repeats a run (two runs named alike)")
    return runs


def config_path_and_arg(sweep: Sweep) -> tuple[str, str]:
    path, _, arg = sweep.config.partition(":")
    return (path if os.path.isabs(path) else os.path.join(REPO, path)), arg


def build_config(sweep: Sweep, run: SweepRun) -> ml_collections.ConfigDict:
    """The run's config: the sweep's config file with the run's overrides (unknown fields are errors)."""
    path, arg = config_path_and_arg(sweep)
    config = load_module(path, "config").get_config(arg)
    for field, value in run.overrides.items():
        *sections, leaf = field.split(".")
        node = config
        for section in sections:
            if section not in node or not isinstance(node[section], ml_collections.ConfigDict):
                raise SweepError(f"{sweep.path}: {field!r} is not a config field")
            node = node[section]
        if leaf not in node:
            raise SweepError(f"{sweep.path}: {field!r} is not a config field")
        try:
            node[leaf] = tuple(value) if isinstance(value, list) else value
        except TypeError as error:
            raise SweepError(f"{sweep.path}: {field}={value!r}: {error}") from None
    config.lock()
    return config


def check_recipe(workdir: str, expected: ml_collections.ConfigDict, launcher: str) -> list[str]:
    """How a run that already trained in `workdir` differs from the recipe `launcher` runs now (runs.config_drift).

    A finished run's drift is logged as a warning and returned (the run is kept and skipped). A
    started, unfinished run with drift is a SweepError: resuming it would train one run under two
    recipes (rec_kd.main would refuse it too, but only once its turn came). `expected` is resolved
    for its catalogue first, as the run resolved its own config.json.
    """
    if not runs.has_trained(workdir):
        return []  # before reading the catalogue: most runs of a fresh grid have not trained
    resolved = runs.with_resolved_table(expected, lambda: catalogue(expected))
    drift = runs.drift_since_training(workdir, resolved, launcher)
    if drift and not run_is_finished(workdir):
        raise SweepError(
            f"{workdir} was started under another recipe than {launcher}'s ({'; '.join(drift)}); "
            "resuming it would mix the two: move it out of the root to start it again"
        )
    if drift:
        logging.warning(
            "%s finished under another recipe than %s's (%s); it is kept and skipped: move it out of the root to rerun it.",
            workdir,
            launcher,
            "; ".join(drift),
        )
    return drift


def catalogue(config: ml_collections.ConfigDict) -> data_lib.SessionData:
    """The data `config` trains on (data.load_configured), read once per process for all the runs that share it."""
    return _catalogue(json.dumps({"dataset": config.dataset, "data_dir": config.data_dir, "data": config.data.to_dict()}, sort_keys=True))


@functools.cache
def _catalogue(data_fields: str) -> data_lib.SessionData:
    return data_lib.load_configured(ml_collections.ConfigDict(json.loads(data_fields)))


def run_is_finished(workdir: str) -> bool:
    return os.path.exists(os.path.join(workdir, "results.json"))


def main_command(sweep: Sweep, run: SweepRun, root: str) -> list[str]:
    """The ordinary `rec_kd.main` command of one run."""
    path, arg = config_path_and_arg(sweep)
    flags = [f"--config.{field}={format_value(value)}" for field, value in run.overrides.items()]
    return [sys.executable, "-m", "rec_kd.main", f"--config={path}:{arg}", f"--workdir={os.path.join(root, run.name)}", *flags]


def vmap_groups(sweep: Sweep, runs: Sequence[SweepRun]) -> list[list[SweepRun]]:
    """Runs grouped so that each group differs only in members.MEMBER_FIELDS (one vmapped program)."""
    groups: dict[tuple, list[SweepRun]] = {}
    for run in runs:
        fixed = tuple(sorted((f, format_value(v)) for f, v in run.overrides.items() if f not in members.MEMBER_FIELDS))
        groups.setdefault(fixed, []).append(run)
    return list(groups.values())


def group_command(sweep: Sweep, group: Sequence[SweepRun], root: str) -> list[str]:
    """The command that trains a group's members in one process (`launch.sweep --members=...`)."""
    return [
        sys.executable,
        "-m",
        "launch.sweep",
        f"--sweep={os.path.abspath(sweep.path)}",
        f"--root={root}",
        f"--members={';'.join(run.name for run in group)}",
    ]


@dataclasses.dataclass
class Job:
    name: str
    command: list[str]
    log_path: str


def run_jobs(
    jobs: Sequence[Job],
    parallel: int = 1,
    poll_s: float = 0.5,
    on_exit: Callable[[Job, int], None] | None = None,
    on_poll: Callable[[], None] | None = None,
    on_poll_every_s: float = 60.0,
) -> dict[str, int]:
    """Runs commands, `parallel` at a time; {name: exit code}.

    SIGTERM or Ctrl-C to this process is passed on as SIGTERM to every running job (each saves a
    checkpoint and exits), no new job starts, and the jobs not started are reported as -1.
    `on_exit(job, code)` is called as each job exits, while the others run on; `on_poll()` every
    `on_poll_every_s` while any job runs, and once more at the end (a grid copies what its runs
    wrote so far, for a session that may end before they do). Should this runner
    fail (an on_exit that raises, say), its running jobs get SIGTERM and are waited for: none is
    left training in a workdir that a rerun would resume.
    """
    pending, running, codes = list(jobs), {}, {}
    stopping = False
    polled = time.monotonic()

    def stop(signum, frame):
        nonlocal stopping
        stopping = True
        for process, _, _ in running.values():
            process.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while pending or running:
            while pending and len(running) < parallel and not stopping:
                job = pending.pop(0)
                os.makedirs(os.path.dirname(job.log_path), exist_ok=True)
                log = open(job.log_path, "a")
                # A session of its own: a terminal's Ctrl-C reaches only this runner, which passes on SIGTERM.
                process = subprocess.Popen(job.command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                running[job.name] = (process, log, job)
            for name, (process, log, job) in list(running.items()):
                if process.poll() is not None:
                    codes[name] = process.returncode
                    log.close()
                    del running[name]
                    if on_exit:
                        on_exit(job, process.returncode)
            if stopping:
                codes.update({job.name: -1 for job in pending})
                pending = []
            if on_poll and time.monotonic() - polled >= on_poll_every_s:
                on_poll()
                polled = time.monotonic()
            time.sleep(poll_s)
        if on_poll:
            on_poll()
    except BaseException:
        stop(None, None)
        for process, log, _ in running.values():
            process.wait()
            log.close()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return codes
