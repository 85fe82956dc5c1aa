"""Epoch selection on valid (rec_kd.train.records.update_selection): the minimum improvement and patience."""

import ml_collections

from rec_kd import defaults
from rec_kd.train import records

# The Tmall teacher's valid HR@20 after epochs 1..10 of its select phase (commit 3013738, docs/findings.md, "A minimum gain").
TMALL_TEACHER_VALID = [0.2982, 0.3370, 0.3494, 0.3450, 0.3495, 0.3409, 0.3481, 0.3513, 0.3470, 0.3471]


def select(valid_hr: list[float], min_delta: float, patience: int) -> tuple[int, int]:
    """(selected epoch, epochs evaluated before stopping) for a sequence of valid HR@20."""
    train_config = ml_collections.ConfigDict(
        {"selection_metric": "hr@20", "early_stop_min_delta": min_delta, "early_stop_patience": patience}
    )
    record = {"best": None, "evals_since_best": 0}
    for epoch, hr in enumerate(valid_hr, start=1):
        entry = {"step": 100 * epoch, "epoch": epoch, "valid": {"hr@20": hr}}
        if records.update_selection(record, entry, train_config, state=None, selected_checkpoints=[]):
            return record["best"]["epoch"], epoch
    return record["best"]["epoch"], len(valid_hr)


def test_any_gain_counts_without_a_minimum_improvement():
    # 0.3495 (epoch 5) beats 0.3494 and 0.3513 (epoch 8) beats it: patience never runs out, epoch 8 wins.
    assert select(TMALL_TEACHER_VALID, min_delta=0.0, patience=3) == (8, 10)


def test_gains_below_the_minimum_improvement_do_not_count():
    # Nothing after epoch 3 (0.3494) beats 0.3514 within patience 3: stop after epoch 6, select epoch 3.
    assert select(TMALL_TEACHER_VALID, min_delta=0.002, patience=3) == (3, 6)


def test_a_gain_just_over_the_minimum_improvement_counts():
    assert select([0.30, 0.3021, 0.3030], min_delta=0.002, patience=0) == (2, 3)
    assert select([0.30, 0.3019, 0.3030], min_delta=0.002, patience=0) == (3, 3)


def test_the_paper_datasets_use_a_minimum_improvement_and_smoke_runs_do_not():
    assert defaults.get_config("tmall", "teacher").train.early_stop_min_delta == 0.002
    assert defaults.get_config("retailrocket", "student").train.early_stop_min_delta == 0.002
    assert defaults.get_config("tmall", "student,smoke").train.early_stop_min_delta == 0.0
    assert defaults.get_config("ml-100k", "teacher").train.early_stop_min_delta == 0.0
