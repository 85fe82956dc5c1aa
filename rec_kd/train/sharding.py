"""The 1-D 'data' device mesh, and how batches and state are placed on it.

A batch is split along its rows over the 'data' axis; everything else (state, constants, the
teacher) is replicated, except, with train.shard_item_table, a dense item table and its optimizer
moments, split by rows over the same axis (`state_shardings`): XLA then gathers the rows a step
reads and scatters their updates where they live. Batches are built on the host in the same order
by every process; each process sends only its own devices' rows.
"""

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rec_kd.defaults import ConfigError


@dataclasses.dataclass(frozen=True)
class Placement:
    """The 1-D 'data' mesh and the two shardings every array of a run uses."""

    mesh: Mesh
    replicated: NamedSharding
    batch: NamedSharding

    @classmethod
    def over_all_devices(cls) -> "Placement":
        mesh = Mesh(np.asarray(jax.devices()), ("data",))
        return cls(mesh, NamedSharding(mesh, P()), NamedSharding(mesh, P("data")))

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    def process_rows(self, num_rows: int) -> slice:
        """The rows of a global batch that live on this process's devices (all rows in one process)."""
        indices = self.batch.addressable_devices_indices_map((num_rows,)).values()
        return slice(min(index[0].start or 0 for index in indices), max(index[0].stop or num_rows for index in indices))

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Global host batch -> global array sharded on 'data'; only this process's rows are sent.

        Every process builds the same batch order (a function of data_seed and epoch) and passes
        only its own rows; `make_array_from_process_local_data` assembles the global batch.
        """
        rows = self.process_rows(len(batch["weights"]))
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.batch, x[rows]), batch)

    def replicate(self, tree: Any) -> Any:
        """Host values (the same in every process) -> global arrays replicated on every device."""
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x)), tree)


def check_batch_sizes(config, num_devices: int) -> None:
    """Both batch sizes must split evenly over the devices (every device gets the same rows)."""
    for name in ("batch_size", "eval_batch_size"):
        size = config.train[name]
        if size <= 0 or size % num_devices:
            raise ConfigError(f"train.{name}={size} must be a positive multiple of the {num_devices} devices")


def check_table_sharding(num_rows: int, num_devices: int) -> None:
    """train.shard_item_table needs the (padded) table rows to split evenly over the devices."""
    if num_rows % num_devices:
        raise ConfigError(
            f"train.shard_item_table=True: the item table's {num_rows} rows (a multiple of 1,024) do not split over "
            f"{num_devices} devices; shard over a power-of-two device count up to 1,024, or set train.shard_item_table=False"
        )


def state_shardings(state_shapes: Any, placement: Placement, table_shape: tuple[int, int] | None) -> Any:
    """The sharding of every leaf of a run's state (shapes or arrays): replicated, or split by rows.

    `table_shape` (rows, d): the sharded item table's; every leaf whose last two axes have that shape
    (the table, and Adam's moments of it, with or without a member axis in front) is split along its
    rows over 'data'. None: every leaf replicated. No other parameter has the table's shape: its rows
    are padded to a multiple of 1,024, and nothing else in the model has that many rows.
    """
    if table_shape is None:
        return jax.tree.map(lambda _: placement.replicated, state_shapes)

    def sharding(leaf):
        shape = tuple(leaf.shape)
        if shape[-2:] != tuple(table_shape):
            return placement.replicated
        return NamedSharding(placement.mesh, P(*([None] * (len(shape) - 2)), "data", None))

    return jax.tree.map(sharding, state_shapes)
