"""Yoochoose 1/64 (SR-GNN pickles, ../shared/data/yoochoose1_64).

Teacher, then student:
  python -m rec_kd.main --config=configs/yoochoose1_64.py:teacher --workdir=/tmp/rec_kd/yoochoose1_64_teacher
  python -m rec_kd.main --config=configs/yoochoose1_64.py:student --config.teacher_workdir=/tmp/rec_kd/yoochoose1_64_teacher \
      --workdir=/tmp/rec_kd/yoochoose1_64_student
Add ',smoke' to the argument for a run of under a minute on a slice of the data; add a variant
(ce, kd, kd_cl, tt, dense) to a student for an ablation. Every field is documented in
rec_kd/defaults.py.
"""

from rec_kd import defaults


def get_config(arg: str = ""):
    return defaults.get_config("yoochoose1_64", arg)
