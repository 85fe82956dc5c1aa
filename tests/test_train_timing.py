"""A run's training time (rec_kd.train.loop.log_pending): the wait for dispatched steps is training time.

JAX returns from a jitted step as soon as it is queued; the step runs while the host queues the
next ones, and the fetch of their metrics waits for them. Timed before that fetch, the runs of
2026-12-06 recorded 1,686 examples/s where their logged intervals measured about 1,190.
"""

import json
import time
import types

import jax
import numpy as np

from rec_kd.train import loop, records
from rec_kd.train.metric_writer import MetricWriter

FETCH_SECONDS = 0.3  # how long the stand-in fetch waits, as for steps still running


def one_member_training(workdir) -> types.SimpleNamespace:
    record = records.new_record()
    member = types.SimpleNamespace(record=record, writer=MetricWriter(str(workdir)))
    return types.SimpleNamespace(members=[member], lead=record)


def test_the_wait_for_dispatched_steps_counts_as_training_time(monkeypatch, tmp_path):
    def slow_fetch(tree):
        time.sleep(FETCH_SECONDS)
        return jax.tree.map(np.asarray, tree)

    monkeypatch.setattr(loop.jax, "device_get", slow_fetch)
    training = one_member_training(tmp_path)
    pending = [({"loss/total": np.array([2.0])}, 60), ({"loss/total": np.array([4.0])}, 40)]

    started = time.time()
    finished = loop.log_pending(training, pending, started)
    training.members[0].writer.close()

    record = training.lead
    assert record["train_examples"] == 100
    assert record["train_seconds"] == finished - started
    assert record["train_seconds"] >= FETCH_SECONDS
    (logged,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged["loss/total"] == 3.0
    assert logged["train/examples_per_s"] == 100 / record["train_seconds"]  # the interval and the run's total: one clock


def test_a_finished_member_is_not_timed(tmp_path):
    training = one_member_training(tmp_path)
    training.lead["finished"] = True
    started = time.time()
    loop.log_pending(training, [({"loss/total": np.array([1.0])}, 10)], started)
    training.members[0].writer.close()
    assert training.lead["train_examples"] == 0 and training.lead["train_seconds"] == 0.0
    assert not (tmp_path / "metrics.jsonl").read_text()
