"""Tmall: the main student with its items on shuffled table rows (issue 11, part 3; decided on valid only).

Tmall's ids number items in order of first appearance, so the STTD table's first core index
(id // 241) groups items that appeared at about the same time, and the most frequent items crowd
into a few of those groups (the 1,000 most frequent sit up to 35 on one first-core row, against 12
in a random order). Fitting the
main student's STTD table to the teacher's table with the teacher's network around it, the
shuffled order holds far more of the teacher than the id order (docs/findings.md, "Row order"). This run
asks whether a trained student gains the same: the main student (configs/tmall.py:student,full,
seed 0, the same batches) with `table.row_order=shuffled`, 3 select-phase epochs without a refit,
to compare epoch by epoch with the tuning runs (configs/sweeps/tmall_tuning.py) and the grid's
main_s0.

  TMALL_TEACHER=/work/runs/odrec/tmall/teacher_s0 python -m launch.sweep \\
      --sweep=configs/sweeps/tmall_row_order.py --root=/work/runs/tuning/tmall
"""

from rec_kd.train import sweeps


def get_sweep():
    teacher_workdir = sweeps.required_env("TMALL_TEACHER", __file__, "the grid's Tmall teacher workdir (ROOT/tmall/teacher_s0)")
    return {
        "config": "configs/tmall.py:student,full",
        "base": {"teacher_workdir": teacher_workdir, "train.refit_on_valid": False, "train.num_epochs": 3},
        "zip": {"table.row_order": ["shuffled"]},
    }
