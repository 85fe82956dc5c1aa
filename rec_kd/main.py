"""Entry point: `python -m rec_kd.main --config=configs/NAME.py:ARGS --workdir=DIR [--config.a.b=v ...]`.

Flags are only --config and --workdir; every hyperparameter lives in the (locked) config, so a
misspelt override is an error. Re-running the same command on a workdir continues from its newest
checkpoint. SIGTERM saves a checkpoint and exits 0.

On glibc the command first re-executes itself once with malloc settings that let XLA reuse its
freed CPU buffers (rec_kd/train/host_memory.py: a third less CPU per teacher step at batch 100, the same
numbers bit for bit); REC_KD_KEEP_FREED_MEMORY=0 opts out.
"""

import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rec_kd import checkpointing
from rec_kd.data import DataError
from rec_kd.defaults import ConfigError
from rec_kd.train import distributed, host_memory, loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py:ARGS).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, results.json.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        distributed.initialize(_CONFIG.value)
        command = "python -m rec_kd.main " + shlex.join(sys.argv[1:])
        results = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value, command)
    except (DataError, ConfigError, checkpointing.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    if results.get("preempted"):
        logging.warning("Stopped by SIGTERM at step %d; a checkpoint was saved.", results["step"])
        return
    print(f"test ({results['protocol']}):", {name: round(value, 4) for name, value in results["test"].items()})


if __name__ == "__main__":
    host_memory.restart_with_tunables()  # reuse XLA's freed CPU buffers (see rec_kd/train/host_memory.py)
    app.run(main)
