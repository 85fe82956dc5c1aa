"""MovieLens-100k from the RecBole 1.2.1 wheel (leave-one-out; the embedded default).

Teacher, then student:
  python -m rec_kd.main --config=configs/ml_100k.py:teacher --workdir=/tmp/rec_kd/ml-100k_teacher
  python -m rec_kd.main --config=configs/ml_100k.py:student --config.teacher_workdir=/tmp/rec_kd/ml-100k_teacher \
      --workdir=/tmp/rec_kd/ml-100k_student
Add ',smoke' to the argument for a run of under a minute on a slice of the data; add a variant
(ce, kd, kd_cl, tt, dense) to a student for an ablation. Every field is documented in
rec_kd/defaults.py; the dropout, learning rates and schedule `make demo` uses here were chosen on
valid (docs/data.md, "MovieLens-100k: the demo's settings").
"""

from rec_kd import defaults


def get_config(arg: str = ""):
    return defaults.get_config("ml-100k", arg)
