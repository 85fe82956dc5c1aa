"""Tmall student tuning (issue 11, part 2): is the main student's HR@20 gap its table's capacity, or its recipe?

Decided on the validation split only. Every run is the grid's main student (configs/tmall.py:student,full,
seed 0, the same batches) with one change, trained for 3 select-phase epochs without a refit, so its valid
curve compares epoch by epoch with the select phase of ROOT/tmall/main_s0 in the grid:
- rank 120 instead of 60 (about 13.6x instead of 27.3x): does more capacity close the gap?
- the dense table (no compression, 5.2M parameters): the most capacity there is;
- learning rate 2e-3 instead of 1e-3; KD weight 0.5 instead of 0.8 (vmapped members of one program).
Runs go in that order, one at a time.

  TMALL_TEACHER=/work/runs/odrec/tmall/teacher_s0 python -m launch.sweep \\
      --sweep=configs/sweeps/tmall_tuning.py --root=/work/runs/tuning/tmall
  python -m launch.collect --root=/work/runs/tuning/tmall
"""

from rec_kd.train import sweeps


def get_sweep():
    teacher_workdir = sweeps.required_env("TMALL_TEACHER", __file__, "the grid's Tmall teacher workdir (ROOT/tmall/teacher_s0)")
    return {
        "config": "configs/tmall.py:student,full",
        "base": {
            "teacher_workdir": teacher_workdir,
            "train.refit_on_valid": False,
            "train.num_epochs": 3,
            "table.row_order": "id",  # as these runs were made, before Tmall's default became shuffled
        },
        "zip": {
            "table.kind": ["sttd", "dense", "sttd", "sttd"],
            "table.ranks": [[120], [60], [60], [60]],
            "train.learning_rate": [0.001, 0.001, 0.002, 0.001],
            "distill.kd_weight": [0.8, 0.8, 0.8, 0.5],
        },
    }
