"""launch/bench_scale.py's bookkeeping: which rows fit in memory, and the projection's arithmetic."""

import pytest

from launch import bench_scale


def test_rows_that_need_more_memory_than_the_machine_are_skipped_with_the_reason():
    assert bench_scale.row_fits(1_000_000, "teacher", "full", 24.0) == ""
    # 10M x 128 fp32 is 5.12 GB; a teacher keeps 4 copies (table, gradient, two Adam moments): 20.5 GB.
    reason = bench_scale.row_fits(10_000_000, "teacher", "sampled", 24.0)
    assert reason.startswith("needs about 20 GB of 24 GB") and "tables 4 x 5.1 GB" in reason
    assert bench_scale.row_fits(10_000_000, "student", "sampled", 24.0) == ""  # the frozen teacher's table alone
    assert bench_scale.row_fits(10_000_000, "student", "full", 24.0) != ""  # (B, N) logits, three catalogue products


def test_the_projection_extends_each_series_through_its_two_largest_sizes():
    rows = [
        {"num_items": 1_000, "stage": "student", "loss": "sampled", "step_s": 9.0, "model_bytes": 1},
        {"num_items": 10_000, "stage": "student", "loss": "sampled", "step_s": 1.0, "model_bytes": 100},
        {"num_items": 20_000, "stage": "student", "loss": "sampled", "step_s": 2.0, "model_bytes": 200},
        {"num_items": 20_000, "stage": "teacher", "loss": "full", "step_s": 2.0, "model_bytes": 200},  # one size: no line
    ]
    (projected,) = bench_scale.projection(rows, target=100_000)
    assert (projected["stage"], projected["loss"], projected["from"]) == ("student", "sampled", [10_000, 20_000])
    assert projected["step_s"] == pytest.approx(10.0) and projected["model_bytes"] == pytest.approx(1000.0)
