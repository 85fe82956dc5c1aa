"""Tmall: codes with a learned copy signal, and from the teacher's transformer (issue 40, part 4; valid only)

The codes study (configs/sweeps/tmall_codes_study.py) found the pq student level with its teacher
on repeats and short of it on targets new to the session, where STTD's student is far better on
repeats. These runs are its pq row (16 codebooks of 128 from the teacher, 29.1x in bytes) with:
- model.copy_bonus: one learned scalar on the scores of the session's own items (the losses see
  it, unlike the ranking-only model.repeat_bonus);
- that and model.init_from_teacher: the transformer and readout start from the teacher's.
Same protocol: 2 select-phase epochs on train, seed 0, the teacher's select-phase model.

  TMALL_TEACHER=/work/runs/odrec_c/tmall/teacher_s0 python -m launch.sweep \\
      --sweep=configs/sweeps/tmall_codes_copy.py --root=/work/runs/codes_study/tmall --novmap
"""

from rec_kd.train import sweeps


def get_sweep():
    teacher_workdir = sweeps.required_env("TMALL_TEACHER", __file__, "the grid's Tmall teacher workdir (ROOT/tmall/teacher_s0)")
    return {
        "config": "configs/tmall.py:student,codes",
        "base": {
            "teacher_workdir": teacher_workdir,
            "train.refit_on_valid": False,
            "train.num_epochs": 2,
            "table.codes.num_codebooks": 16,
            "table.codes.codebook_size": 128,
            "model.copy_bonus": True,
        },
        "zip": {"model.init_from_teacher": [False, True]},
    }
