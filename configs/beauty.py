"""Amazon Beauty 5-core (user sequences, leave-one-out, ../shared/data/amazon_beauty_5core).

Teacher, then student:
  python -m rec_kd.main --config=configs/beauty.py:teacher --workdir=/tmp/rec_kd/beauty_teacher
  python -m rec_kd.main --config=configs/beauty.py:student --config.teacher_workdir=/tmp/rec_kd/beauty_teacher \
      --workdir=/tmp/rec_kd/beauty_student
Add ',smoke' to the argument for a run of under a minute on a slice of the data; add a variant
(ce, kd, kd_cl, tt, dense) to a student for an ablation. Every field is documented in
rec_kd/defaults.py.
"""

from rec_kd import defaults


def get_config(arg: str = ""):
    return defaults.get_config("beauty", arg)
