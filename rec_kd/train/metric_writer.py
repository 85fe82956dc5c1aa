"""Where training metrics go: metrics.jsonl, TensorBoard (tensorboardX) and a console progress bar.

Device metrics are fetched in groups at logging steps, never after every step, so the host keeps
queuing work while the device computes. Non-finite losses stop the run at the next log.
"""

import json
import logging as std_logging
import math
import os

import numpy as np
import tqdm
from absl import logging
from tensorboardX import SummaryWriter


class _HideOrbaxInfo(std_logging.Filter):
    """Drops Orbax's INFO lines (a dozen per save), which would bury the run's own log."""

    def filter(self, record):
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _HideOrbaxInfo) for f in handler.filters):
        handler.addFilter(_HideOrbaxInfo())


class MetricWriter:
    """Writes one JSON object a line to workdir/metrics.jsonl and mirrors it to TensorBoard."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self._progress = None

    def progress(self, total: int, initial: int, desc: str):
        self._progress = tqdm.tqdm(total=total, initial=initial, desc=desc, unit="batch", disable=not self.enabled, leave=False)
        return self._progress

    def _write(self, record: dict, step: int, prefix: str) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in record.items():
            if name not in ("step", "epoch", "split") and isinstance(value, (int, float)):
                tag = name if "/" in name else f"{prefix}/{name}"
                self._tensorboard.add_scalar(tag.replace("@", "_at_"), value, step)  # TensorBoard tags allow no '@'.

    def log_train(self, step: int, epoch: int, fetched: list[dict], examples: int, seconds: float, record: dict) -> None:
        """Adds fetched per-step metrics (host values) to the epoch's loss sums and writes their mean.

        `seconds` is the training time of these steps (dispatch to fetched), so the interval's
        examples per second and the run's totals (results.json) are one measurement.
        """
        means = {name: float(np.mean([m[name] for m in fetched])) for name in fetched[0]}
        if not all(math.isfinite(value) for value in means.values()):
            raise FloatingPointError(f"non-finite training metrics at step {step}: {means}")
        sums = record["epoch_loss_sums"]
        for metrics in fetched:
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + float(value)
        record["epoch_loss_steps"] += len(fetched)
        record["train_examples"] += examples
        record["train_seconds"] += seconds
        examples_per_s = examples / max(seconds, 1e-9)
        self._write({"step": step, "epoch": epoch, "split": "train", **means, "train/examples_per_s": examples_per_s}, step, "train")
        if self._progress is not None:
            self._progress.set_postfix(loss=f"{means['loss/total']:.4f}", ex_s=f"{examples_per_s:,.0f}")

    def log_eval(self, entry: dict) -> None:
        for split in ("valid", "test", "test_cold"):
            if entry[split] is None:  # no validation in the refit phase (valid is training data)
                continue
            self._write({"step": entry["step"], "epoch": entry["epoch"], "split": split, **entry[split]}, entry["step"], split)
        valid = f"valid hr@20 {entry['valid']['hr@20']:.4f} mrr@20 {entry['valid']['mrr@20']:.4f}" if entry["valid"] else "no valid split"
        logging.info(
            "epoch %d step %d: %s | test hr@20 %.4f mrr@20 %.4f",
            entry["epoch"],
            entry["step"],
            valid,
            entry["test"]["hr@20"],
            entry["test"]["mrr@20"],
        )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.close()
        if self.enabled:
            self._jsonl.close()
            self._tensorboard.close()
            self.enabled = False
