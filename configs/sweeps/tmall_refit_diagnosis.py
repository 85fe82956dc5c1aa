"""Tmall: why does the refit widen the student's HR@20 gap? (issue 11, part 3; a diagnosis, not a selection)

In the grid, the main student is 0.010 test HR@20 below its teacher after the select phase (train
only) and 0.049 below after the refit on train + valid: the teacher's refit gains 0.069, the
student's 0.030. Two students, each trained on every training session (`data.valid_fraction=0`,
the refit's data) and distilling from the grid's refit teacher (checkpoints/best/, trained on
train + valid), evaluate test after each of 3 epochs (the teacher's refit count):
- the dense table (no compression): does an uncompressed student take in the recent sessions as the
  teacher does?
- STTD rank 60 (the main student): does its refit gain more with a third epoch?
Nothing here selects anything: their test curves are read beside the teacher's refit curve, and
the rule that comes out of them must be one that valid alone can apply. Runs go one at a time.

  TMALL_TEACHER=/work/runs/odrec/tmall/teacher_s0 python -m launch.sweep \\
      --sweep=configs/sweeps/tmall_refit_diagnosis.py --root=/work/runs/refit_diagnosis/tmall
"""

from rec_kd.train import sweeps


def get_sweep():
    teacher_workdir = sweeps.required_env("TMALL_TEACHER", __file__, "the grid's Tmall teacher workdir (ROOT/tmall/teacher_s0)")
    return {
        "config": "configs/tmall.py:student,full",
        "base": {
            "teacher_workdir": teacher_workdir,
            "data.valid_fraction": 0.0,
            "train.refit_on_valid": False,
            "train.num_epochs": 3,
            "table.row_order": "id",  # the grid's main_s0 it is compared with read its table in id order
        },
        "zip": {"table.kind": ["dense", "sttd"]},
    }
