"""RetailRocket: the main student on clustered table rows, the session's items ranked first (issue 11, part 4; valid only).

With `model.repeat_bonus=1000` the items a session already holds come first whatever the table
says, so the table no longer has to keep each item apart from its id neighbours, only to predict
the next new item. The probe (fitted cores in the teacher's network) found the clustered order
0.0135 valid HR@20 above the id order under that ranking (docs/findings.md, "Clustered rows"). This run asks
whether a trained student gains the same: the main student (configs/retailrocket.py:student,full,
seed 1: the seed whose id-order student was scored at bonus 1000 after its first epoch) with
`table.row_order=clustered`, and its id-order twin (the same teacher training, the same machine),
1 select-phase epoch each without a refit (the epoch that id-order student was scored after),
valid selecting. Two runs: a row order is not a member field (one program reads one row map).

  RR_TEACHER=/work/runs/odrec/retailrocket/teacher_s0 python -m launch.sweep \\
      --sweep=configs/sweeps/retailrocket_clustered.py --root=/work/runs/tuning/retailrocket
"""

from rec_kd.train import sweeps


def get_sweep():
    teacher_workdir = sweeps.required_env("RR_TEACHER", __file__, "the grid's RetailRocket teacher workdir (ROOT/retailrocket/teacher_s0)")
    return {
        "config": "configs/retailrocket.py:student,full",
        "base": {
            "teacher_workdir": teacher_workdir,
            "seed": 1,
            "model.repeat_bonus": 1000.0,
            "train.refit_on_valid": False,
            "train.num_epochs": 1,
        },
        "zip": {"table.row_order": ["id", "clustered"]},
    }
