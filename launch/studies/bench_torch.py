"""Our teacher step against an eager PyTorch teacher step, side by side in one process; prints one JSON object.

  pip install torch==2.13.0   # CPU build; not a dependency of rec_kd
  python -m launch.studies.bench_torch --data_dir=../shared/data [--torch_batch_sizes=100,1024] [--seconds=20]

Why: issue 12 asks how our teacher step compares with the authors' PyTorch one on the same machine,
and absolute figures from different machines cannot be compared. The authors' code
(xiaxin1998/OD-Rec) is not on this machine, so `TorchTeacher` below is the same network written
plainly in PyTorch from ../shared/design/METHOD.md, the way that code is written: eager modules,
a full-catalogue cross-entropy, `torch.optim.Adam`, dropout 0.5, fp32. It is a stand-in for
the authors' step, not their code; their per-example Python loops (student only) are not in it.
It is the paper's readout; ours (`readout="mean+summary"`) adds one summary token: one more
position, and 256 more parameters than the 5,352,576 this model has for Tmall (printed).

Both steps take the same batches: Tmall's training split in the trainer's order (real length mix,
our length buckets, so PyTorch sees the same shapes), batch 100 by default, after a warm-up over
every bucket. `ours_over_torch` is examples/s of `launch.bench`'s teacher step divided by the
PyTorch step's, timed one after the other in this process: a ratio that does not depend on the
machine. The process restarts under rec_kd.train.host_memory's malloc settings like every entry point
(PyTorch's CPU allocator also uses posix_memalign, so both steps get them); set
REC_KD_KEEP_FREED_MEMORY=0 to time both without.
"""

import json
import os
import platform
import time

import numpy as np
import torch
from absl import app, flags
from torch import nn

from launch import bench
from rec_kd import data as data_lib
from rec_kd import defaults
from rec_kd.train import host_memory
from rec_kd.train.sharding import Placement

_BATCH_SIZES = flags.DEFINE_list("torch_batch_sizes", ["100"], "Global batch sizes to time.")


class TorchTeacher(nn.Module):
    """SASRec block + soft-attention readout + scores against the item table (METHOD.md, "Teacher")."""

    def __init__(self, num_rows: int, max_len: int, dim: int, inner: int, dropout: float):
        super().__init__()
        self.items = nn.Embedding(num_rows, dim)
        self.positions = nn.Embedding(max_len, dim)
        self.input_norm = nn.LayerNorm(dim)
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.attention_norm = nn.LayerNorm(dim)
        self.ffn_in, self.ffn_out = nn.Linear(dim, inner), nn.Linear(inner, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.readout_hidden = nn.Linear(dim, dim)
        self.readout_mean = nn.Linear(dim, dim, bias=False)
        self.readout_weight = nn.Linear(dim, 1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        mask = (items > 0).float()  # (B, L)
        length = items.shape[1]
        x = self.items(items) + self.positions(torch.arange(length))
        x = self.dropout(self.input_norm(x))
        scores = self.query(x) @ self.key(x).transpose(1, 2) / x.shape[-1] ** 0.5
        causal = torch.tril(torch.ones(length, length))
        scores = scores + (1.0 - causal * mask[:, None, :]) * -10000.0
        attended = self.dropout(torch.softmax(scores, dim=-1)) @ self.value(x)
        x = self.attention_norm(x + self.dropout(self.out(attended)))
        ffn = self.ffn_out(self.dropout(nn.functional.gelu(self.ffn_in(x))))
        h = self.ffn_norm(x + self.dropout(ffn))
        mean = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        beta = self.readout_weight(torch.sigmoid(self.readout_hidden(torch.tanh(h)) + self.readout_mean(mean)[:, None, :]))
        session = (mask[..., None] * beta * h).sum(1)
        logits = session @ self.items.weight.T
        logits[:, 0] = -1e9  # the padding row is never a target
        return logits


def torch_batches(batches: list[dict]) -> list[dict]:
    return [
        {
            "items": torch.from_numpy(b["items"].astype(np.int64)),
            "targets": torch.from_numpy(b["targets"].astype(np.int64)),
            "weights": torch.from_numpy(b["weights"].astype(np.float32)),
        }
        for b in batches
    ]


def time_torch_teacher(data, batch_size: int) -> dict:
    config = defaults.get_config(data.name, "teacher")
    buckets = data_lib.bucket_lengths(config.data.max_len, tuple(config.data.buckets))
    batches = torch_batches(data_lib.train_batches(data.train, batch_size, data_seed=0, epoch=0, buckets=buckets))
    torch.manual_seed(0)
    model = TorchTeacher(
        data.num_items + 1, config.data.max_len, config.model.hidden_dim, config.model.inner_dim, config.model.dropout_rate
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.learning_rate)

    def step(batch):
        losses = nn.functional.cross_entropy(model(batch["items"]), batch["targets"], reduction="none")
        loss = (losses * batch["weights"]).sum() / batch["weights"].sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for width in sorted({b["items"].shape[1] for b in batches}):  # warm up every bucket's shapes
        step(next(b for b in batches if b["items"].shape[1] == width))
    examples, index, started, cpu_started = 0, 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < bench._SECONDS.value and index < len(batches):
        step(batches[index])
        examples += int(batches[index]["weights"].sum())
        index += 1
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "steps": index,
        "examples_per_s": examples / seconds,
        "step_ms": 1000 * seconds / index,
        "step_cpu_ms": 1000 * cpu_seconds / index,
    }


def main(argv):
    del argv
    data = data_lib.load_dataset(bench._DATASET.value, bench._DATA_DIR.value)
    placement = Placement.over_all_devices()
    rows = []
    for batch_size in (int(size) for size in _BATCH_SIZES.value):
        torch_row = time_torch_teacher(data, batch_size)
        ours = bench.time_training("teacher", batch_size, data, placement)
        rows.append(
            {
                "batch_size": batch_size,
                "torch": torch_row,
                "ours": {key: ours[key] for key in ("steps", "examples_per_s", "step_ms", "step_cpu_ms")},
                "ours_over_torch": ours["examples_per_s"] / torch_row["examples_per_s"],
                "ours_over_torch_cpu": torch_row["step_cpu_ms"] / ours["step_cpu_ms"],
            }
        )
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps({"machine": machine, "dataset": data.name, "teacher": rows}, indent=2))


if __name__ == "__main__":
    host_memory.restart_with_tunables()
    app.run(main)
