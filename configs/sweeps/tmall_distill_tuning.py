"""Tmall: does tuning the distillation close the 27x student's HR@20 gap? (issue 11, part 2; valid only)

The grid's ablations put the gap in the table (docs/findings.md, "The table, not the recipe"): the same student with a
dense table matches its teacher. This sweep checks the other side on valid, as the issue asks:
the main student (configs/tmall.py:student,full, shuffled rows, seed 0, the same batches) with
one distillation hyperparameter changed per run, 2 select-phase epochs on train without a refit
(distilling from the teacher's select-phase model, which never saw valid). The five differ only in
vmappable fields, so by default they train as members of one program; the recorded runs used
--novmap, one after another, as fast on two CPU cores (docs/findings.md, "What distillation buys"):
- the main recipe (learning rate 1e-3, KD weight 0.8, KD temperature 1), the baseline;
- KD temperature 2 and 4 (softer targets carry more of the teacher's ranking of the tail);
- KD weight 2.0 (more of the teacher's signal against the rec loss);
- learning rate 2e-3.

  TMALL_TEACHER=/work/runs/odrec_b/tmall/teacher_s0 python -m launch.sweep \\
      --sweep=configs/sweeps/tmall_distill_tuning.py --root=/work/runs/tuning_b/tmall --novmap
  python -m launch.collect --root=/work/runs/tuning_b/tmall
"""

from rec_kd.train import sweeps


def get_sweep():
    teacher_workdir = sweeps.required_env("TMALL_TEACHER", __file__, "the grid's Tmall teacher workdir (ROOT/tmall/teacher_s0)")
    return {
        "config": "configs/tmall.py:student,full",
        "base": {"teacher_workdir": teacher_workdir, "train.refit_on_valid": False, "train.num_epochs": 2},
        "zip": {
            "train.learning_rate": [0.001, 0.001, 0.001, 0.001, 0.002],
            "distill.kd_weight": [0.8, 0.8, 0.8, 2.0, 0.8],
            "distill.kd_temperature": [1.0, 2.0, 4.0, 1.0, 1.0],
        },
    }
