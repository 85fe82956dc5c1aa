"""Your own data: any dataset given by format and path (docs/data.md has a command per format).

Teacher, then student:
  python -m rec_kd.main --config=configs/custom.py:teacher --config.data.format=inter \
      --config.data.path=my_data.inter --workdir=/tmp/rec_kd/mine_teacher
  python -m rec_kd.main --config=configs/custom.py:student --config.data.format=inter \
      --config.data.path=my_data.inter --config.teacher_workdir=/tmp/rec_kd/mine_teacher \
      --workdir=/tmp/rec_kd/mine_student
data.format is srgnn (a folder), user_sequences, inter or events (a raw click CSV, preprocessed
by the data.events rules). The student's STTD factors are suggested from the catalogue size at
table.target_compression (30x by default). Add ',smoke' to the argument for a run of under a
minute on a slice of the data; add a variant (ce, kd, kd_cl, tt, dense) to a student for an
ablation. Every field is documented in rec_kd/defaults.py.
"""

from rec_kd import defaults


def get_config(arg: str = ""):
    return defaults.get_config(defaults.CUSTOM, arg)
