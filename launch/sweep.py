"""Run a sweep file locally, N processes at once or vectorised, or write its cluster job script.

  python -m launch.sweep --sweep=my_sweep.py --root=/tmp/sweep                  # vmapped groups, one at a time
  python -m launch.sweep --sweep=... --root=... --novmap --parallel=2            # one process a run, two at once
  python -m launch.sweep --sweep=... --root=... --mode=slurm                     # writes ROOT/sweep.slurm
  python -m launch.sweep --sweep=... --root=... --mode=tpu                             # writes ROOT/sweep_tpu.sh
  python -m launch.sweep --sweep=... --root=... --mode=list                            # prints the commands

The sweep file format is in rec_kd/train/sweeps.py; docs/scaling.md walks through every mode. Rerunning
the same command skips finished runs and resumes interrupted ones. SIGTERM or Ctrl-C stops every
running job cleanly (each saves a checkpoint). By default (`--vmap`) the runs that differ only in
seed, learning rate, loss weights or temperatures train as members of one program
(rec_kd.train.loop.train_members); `--novmap` gives every run its own process. `--members` is how such
a group is started and is not meant to be typed.
"""

import hashlib
import os
import shlex
import sys

from absl import app, flags, logging

from rec_kd import checkpointing
from rec_kd.data import DataError
from rec_kd.defaults import ConfigError
from rec_kd.train import distributed, loop, sweeps

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file (a Python file with get_sweep()).")
_ROOT = flags.DEFINE_string("root", None, "Folder of the runs' workdirs, ROOT/RUN_NAME (outside the repository).")
_MODE = flags.DEFINE_enum("mode", "local", ["local", "list", "slurm", "tpu"], "Run here, print the commands, or write a job script.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Local mode: processes at once.")
_VMAP = flags.DEFINE_bool(
    "vmap", True, "Train runs that differ only in seed, learning rate, loss weights or temperatures as vmapped members of one program."
)
_MEMBERS = flags.DEFINE_string("members", "", "Internal: ';'-separated run names to train now, in this process, as members.")
_SLURM_ARGS = flags.DEFINE_list("slurm_args", ["--gpus-per-task=1", "--time=24:00:00"], "Slurm mode: extra #SBATCH lines.")
flags.mark_flags_as_required(["sweep", "root"])


def train_members_now(sweep: sweeps.Sweep, runs: list[sweeps.SweepRun], root: str) -> None:
    """The `--members` mode: one vmapped program for the given runs (the unfinished ones)."""
    runs = [run for run in runs if not sweeps.run_is_finished(os.path.join(root, run.name))]
    if not runs:
        return
    configs = [sweeps.build_config(sweep, run) for run in runs]
    distributed.initialize(configs[0])
    workdirs = [os.path.join(root, run.name) for run in runs]
    commands = [shlex.join(sweeps.main_command(sweep, run, root)) for run in runs]  # each member, alone
    results = loop.train_members(configs, workdirs, commands)
    if results[0].get("preempted"):
        logging.warning("Stopped by SIGTERM at step %d; checkpoints saved.", results[0]["step"])


def refuse_mixed_recipes(sweep: sweeps.Sweep, runs: list[sweeps.SweepRun], root: str) -> None:
    """Warns of finished runs made under another recipe than the sweep's now (they stay and are
    skipped); a started, unfinished one is a SweepError (sweeps.check_recipe)."""
    for run in runs:
        workdir = os.path.join(root, run.name)
        sweeps.check_recipe(workdir, sweeps.build_config(sweep, run), "the sweep")


def units_of_work(sweep: sweeps.Sweep, runs: list[sweeps.SweepRun], vmap: bool) -> list[list[sweeps.SweepRun]]:
    return sweeps.vmap_groups(sweep, runs) if vmap else [[run] for run in runs]


def unit_command(sweep: sweeps.Sweep, unit: list[sweeps.SweepRun], root: str) -> list[str]:
    return sweeps.main_command(sweep, unit[0], root) if len(unit) == 1 else sweeps.group_command(sweep, unit, root)


def portable(command: list[str]) -> str:
    """A command for another machine: `python` instead of this interpreter's path."""
    return shlex.join(["python", *command[1:]] if command[0] == sys.executable else command)


def slurm_script(commands: list[str], root: str, extra: list[str]) -> str:
    lines = [
        "#!/bin/bash",
        "# One array task per run (or vmapped group). Slurm sends SIGTERM before preemption or the time",
        "# limit; the run saves a checkpoint and exits, and a requeued task resumes it.",
        f"#SBATCH --array=0-{len(commands) - 1}",
        f"#SBATCH --output={root}/_slurm/%A_%a.log",
        "#SBATCH --requeue",
        "#SBATCH --signal=TERM@120",
        *(f"#SBATCH {arg}" for arg in extra),
        f"cd {shlex.quote(sweeps.REPO)}",
        "COMMANDS=(",
        *(f"  {shlex.quote(command)}" for command in commands),
        ")",
        'eval "${COMMANDS[$SLURM_ARRAY_TASK_ID]}"',
    ]
    return "\n".join(lines) + "\n"


def tpu_script(commands: list[str]) -> str:
    """Each run spans the whole slice: every worker runs it, jax.distributed finds its peers."""
    lines = [
        "#!/bin/bash",
        "# Usage: TPU_NAME=my-slice ZONE=us-central2-b bash sweep_tpu.sh",
        "# The repository must be at the same path on every worker; each run is one multi-host job.",
        "set -euo pipefail",
    ]
    for command in commands:
        remote = f"cd {shlex.quote(sweeps.REPO)} && REC_KD_DISTRIBUTED=auto {command}"
        lines.append(f'gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command={shlex.quote(remote)}')
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    root = os.path.abspath(_ROOT.value)
    try:
        sweep = sweeps.load_sweep(_SWEEP.value)
        runs = sweeps.expand(sweep)
        if _MEMBERS.value:
            by_name = {run.name: run for run in runs}
            missing = [name for name in _MEMBERS.value.split(";") if name not in by_name]
            if missing:
                raise sweeps.SweepError(f"{sweep.path}: no runs named {missing}")
            train_members_now(sweep, [by_name[name] for name in _MEMBERS.value.split(";")], root)
            return
        units = units_of_work(sweep, runs, _VMAP.value)
    except (sweeps.SweepError, ConfigError, DataError, checkpointing.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)

    if _MODE.value != "local":
        commands = [portable(unit_command(sweep, unit, root)) for unit in units]
        if _MODE.value == "list":
            print("\n".join(commands))
            return
        os.makedirs(root, exist_ok=True)
        path = os.path.join(root, "sweep.slurm" if _MODE.value == "slurm" else "sweep_tpu.sh")
        with open(path, "w") as f:
            f.write(slurm_script(commands, root, _SLURM_ARGS.value) if _MODE.value == "slurm" else tpu_script(commands))
        print(f"wrote {path} ({len(commands)} jobs)")
        return

    try:
        refuse_mixed_recipes(sweep, runs, root)
    except (sweeps.SweepError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    jobs, skipped = [], 0
    for unit in units:
        todo = [run for run in unit if not sweeps.run_is_finished(os.path.join(root, run.name))]
        skipped += len(unit) - len(todo)
        if todo:
            log_dir = os.path.join(root, todo[0].name) if len(todo) == 1 else os.path.join(root, "_groups")
            name = ";".join(run.name for run in todo)
            log_path = os.path.join(log_dir, "stdout.log" if len(todo) == 1 else f"{hashlib.sha1(name.encode()).hexdigest()[:12]}.log")
            jobs.append(sweeps.Job(name, unit_command(sweep, todo, root), log_path))
    logging.info("%d runs: %d finished (skipped), %d jobs to run, %d at a time.", len(runs), skipped, len(jobs), _PARALLEL.value)
    codes = sweeps.run_jobs(jobs, _PARALLEL.value)
    failed = {name: code for name, code in codes.items() if code > 0}
    unfinished = [run.name for run in runs if not sweeps.run_is_finished(os.path.join(root, run.name))]
    for name, code in failed.items():
        print(f"failed (exit {code}): {name}; see its stdout.log", file=sys.stderr)
    if failed:
        sys.exit(1)
    if unfinished:
        print(f"{len(unfinished)} runs unfinished (stopped); rerun the same command to continue", file=sys.stderr)
        return
    print(f"all {len(runs)} runs finished; tables: python -m launch.collect --root={root}")


if __name__ == "__main__":
    app.run(main)
