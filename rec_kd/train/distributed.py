"""Multi-process (multi-host) runs: `jax.distributed.initialize` from the config or the environment.

Every process runs the same command. The settings come from the config's `distributed` fields,
else from these environment variables (the config wins where both are set):

  REC_KD_COORDINATOR_ADDRESS  host:port of process 0's coordinator   (config.distributed.coordinator_address)
  REC_KD_NUM_PROCESSES        number of processes                    (config.distributed.num_processes)
  REC_KD_PROCESS_ID           this process's index, 0..N-1           (config.distributed.process_id)
  REC_KD_DISTRIBUTED=auto     let JAX detect the cluster: TPU slices, Slurm, Open MPI
                                                                     (config.distributed.auto)

With none of them set the run is a single process. Each process then feeds only its own rows of
every batch (sharding.Placement.put_batch), Orbax saves and restores collectively, and only process 0
writes logs and results.json.
"""

import os

import jax
from absl import logging

from rec_kd.defaults import ConfigError

ENV_NAMES = {
    "coordinator_address": "REC_KD_COORDINATOR_ADDRESS",
    "num_processes": "REC_KD_NUM_PROCESSES",
    "process_id": "REC_KD_PROCESS_ID",
}
AUTO_ENV_NAME = "REC_KD_DISTRIBUTED"


def settings(config, environ=None) -> dict | None:
    """{'coordinator_address', 'num_processes', 'process_id'} (empty dict: auto-detect), or None for one process."""
    environ = os.environ if environ is None else environ
    section = config.distributed
    if section.auto or environ.get(AUTO_ENV_NAME, "") == "auto":
        return {}
    values = {
        "coordinator_address": section.coordinator_address or environ.get(ENV_NAMES["coordinator_address"], ""),
        "num_processes": section.num_processes or int(environ.get(ENV_NAMES["num_processes"], "0") or 0),
        "process_id": section.process_id if section.process_id >= 0 else int(environ.get(ENV_NAMES["process_id"], "") or -1),
    }
    if not values["coordinator_address"]:
        return None
    missing = [name for name, unset in (("num_processes", 0), ("process_id", -1)) if values[name] == unset]
    if missing:
        names = ", ".join(f"distributed.{name} / {ENV_NAMES[name]}" for name in missing)
        raise ConfigError(f"a coordinator address is set but not {names}")
    return values


def initialize(config) -> None:
    """Joins the multi-process runtime if the config or the environment asks for it (see above)."""
    arguments = settings(config)
    if arguments is None:
        return
    # CPU devices need an explicit cross-process collectives backend (GPU/TPU have their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**arguments)
    logging.info(
        "Process %d of %d; %d local / %d global devices.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
