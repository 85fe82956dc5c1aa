"""Vectorised training: N members trained by one vmapped step end as each would alone.

In process, on MovieLens-100k (shipped in the RecBole wheel) cut to a few thousand examples.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from rec_kd import defaults
from rec_kd.train import loop

pytestmark = pytest.mark.slow


def small_config(stage: str, **fields):
    config = defaults.get_config("ml-100k", f"{stage},smoke")
    config.data.max_train_examples, config.data.max_eval_examples = 1000, 300
    config.train.log_every_steps = 1
    config.data.buckets = (50,)  # one batch shape: one compilation per program, a faster test
    for name, value in fields.items():
        section, _, field = name.rpartition("__")
        setattr(config[section] if section else config, field, value)
    return config


def train_losses(workdir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss/total"] for line in lines if line["split"] == "train"}


def assert_same_run(member_dir: Path, solo_dir: Path) -> None:
    assert_same_metrics(member_dir, solo_dir)
    member, solo = (json.loads((d / "results.json").read_text()) for d in (member_dir, solo_dir))
    assert member["selected_step"] == solo["selected_step"] and member["seed"] == solo["seed"]


def assert_same_metrics(member_dir: Path, solo_dir: Path) -> None:
    """The reported metrics and every logged training loss agree (to float tolerance)."""
    member, solo = (json.loads((d / "results.json").read_text()) for d in (member_dir, solo_dir))
    for split in ("valid", "test", "test_cold"):
        for name, value in solo[split].items():
            assert member[split][name] == pytest.approx(value, abs=1e-5), (split, name)
    member_losses, solo_losses = train_losses(member_dir), train_losses(solo_dir)
    assert member_losses.keys() == solo_losses.keys() and len(solo_losses) >= 8
    np.testing.assert_allclose([member_losses[s] for s in solo_losses], list(solo_losses.values()), rtol=1e-5)


@pytest.fixture(scope="module")
def teacher_members(tmp_path_factory):
    """Two teachers at once (seeds 0 and 1, the second at another learning rate), then each alone."""
    root = tmp_path_factory.mktemp("members")
    fields = [dict(seed=0), dict(seed=1, train__learning_rate=3e-3)]
    member_dirs = [root / f"member_{i}" for i in range(2)]
    results = loop.train_members([small_config("teacher", **f) for f in fields], [str(d) for d in member_dirs])
    solo_dirs = [root / f"solo_{i}" for i in range(2)]
    for f, solo_dir in zip(fields, solo_dirs, strict=True):
        loop.train_and_evaluate(small_config("teacher", **f), str(solo_dir))
    return results, member_dirs, solo_dirs


def test_each_vmapped_teacher_matches_its_run_alone(teacher_members):
    results, member_dirs, solo_dirs = teacher_members
    for member_dir, solo_dir in zip(member_dirs, solo_dirs, strict=True):
        assert_same_run(member_dir, solo_dir)
    # The members really differ (seeds and learning rate reach the step).
    assert len({round(r["test"]["mrr@20"], 6) for r in results}) == 2


def test_vmapped_students_with_a_zero_and_a_traced_weight_match_their_runs_alone(teacher_members, tmp_path):
    _, member_dirs, _ = teacher_members
    teacher_dir = str(member_dirs[0])
    fields = [dict(distill__kd_weight=0.8, distill__cl_temperature=0.2), dict(distill__kd_weight=0.0, distill__cl_temperature=0.5)]
    configs = [small_config("student", teacher_workdir=teacher_dir, **f) for f in fields]
    for config in configs:
        config.train.num_epochs = 1
    loop.train_members(configs, [str(tmp_path / "member_0"), str(tmp_path / "member_1")])
    for i, f in enumerate(fields):
        config = small_config("student", teacher_workdir=teacher_dir, **f)
        config.train.num_epochs = 1
        loop.train_and_evaluate(config, str(tmp_path / f"solo_{i}"))
        assert_same_run(tmp_path / f"member_{i}", tmp_path / f"solo_{i}")


def test_members_that_differ_in_a_shape_field_are_refused(tmp_path):
    configs = [small_config("teacher"), small_config("teacher", model__hidden_dim=64)]
    with pytest.raises(defaults.ConfigError, match=r"may differ only in .* these differ: \['model.hidden_dim'\]"):
        loop.train_members(configs, [str(tmp_path / "a"), str(tmp_path / "b")])


def test_vmapped_mixed_dim_students_train_checkpoint_and_export(teacher_members, tmp_path):
    """A compressor that needs the data (hot rows) through the whole path: members, results, restore, export."""
    from rec_kd import data as data_lib
    from rec_kd.compress import mixed_dim
    from rec_kd.experiments import runs
    from rec_kd.models import build_model, sasrec
    from rec_kd.serve import export, serving
    from tests.test_export import assert_same_top_k

    _, member_dirs, _ = teacher_members
    configs = [small_config("student,mixed_dim", teacher_workdir=str(member_dirs[0]), seed=seed) for seed in (0, 1)]
    for config in configs:
        config.train.num_epochs = 1
    workdirs = [tmp_path / "member_0", tmp_path / "member_1"]
    results = loop.train_members(configs, [str(d) for d in workdirs])
    config = runs.read_run_config(str(workdirs[0]))
    data = data_lib.load_configured(config)
    spec = build_model(config, data.num_items).spec
    assert np.array_equal(mixed_dim.decode_rows(config.table.mixed_dim.hot_rows, data.num_items + 1), data.hot_mask)
    for result in results:
        assert result["table_kind"] == "mixed_dim" and result["variant"] == "mixed_dim"
        assert result["params"]["item_table"] == spec.num_params()
    # Budget 0: at most the size of this catalogue's main STTD table (suggested factors, rank 16).
    assert spec.num_params() <= sasrec.main_sttd_budget(config, data.num_items)
    assert results[0]["test"] != results[1]["test"]  # the seeds differ
    trained = runs.load_trained(str(workdirs[1]), data.num_items)
    path = export.export_workdir(str(workdirs[1]), str(tmp_path / "student.onnx"))
    items, lengths = data.test.items[:16], data.test.lengths[:16]
    ids, scores = serving.Recommender.load(path).run(items, lengths)
    assert_same_top_k(ids, scores, *export.jax_top_k(trained.model, trained.params, items, lengths, 20))
    # The same run shipped with its session's own items ranked first: the bonus is the export's choice.
    boosted = export.export_workdir(str(workdirs[1]), str(tmp_path / "boosted.onnx"), repeat_bonus=1000.0)
    assert serving.Recommender.load(path).session.get_modelmeta().custom_metadata_map["repeat_bonus"] == "0.0"
    assert serving.Recommender.load(boosted).session.get_modelmeta().custom_metadata_map["repeat_bonus"] == "1000.0"
    short_lengths = np.minimum(lengths, 5)  # ml-100k sessions are long: keep each one's first 5 items
    short_items = np.where(np.arange(items.shape[1])[None, :] < short_lengths[:, None], items, 0)
    boosted_ids, _ = serving.Recommender.load(boosted).run(short_items, short_lengths)
    plain_ids, _ = serving.Recommender.load(path).run(short_items, short_lengths)
    for row, plain, session, length in zip(boosted_ids, plain_ids, short_items, short_lengths, strict=True):
        held = set(session[:length].tolist())
        assert set(row[: len(held)].tolist()) == held  # the session's distinct items, first
        assert row[len(held) :].tolist() == [i for i in plain.tolist() if i not in held][: 20 - len(held)]  # then the model's order
