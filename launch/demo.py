"""`make demo`: teacher -> student on the embedded MovieLens-100k, then one comparison table.

  python -m launch.demo --workdir=workdirs/demo

Each stage is an ordinary `rec_kd.main` run in its own sub-workdir, so rerunning the demo resumes
or reuses what is already trained.
"""

import os

from absl import app, flags, logging

from rec_kd import defaults, evaluation, train

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/demo", "Where the teacher and student runs go.")


def comparison_table(teacher: dict, student: dict) -> str:
    """Markdown table: test metrics (selected on valid), parameters and compression."""
    names = evaluation.metric_names()
    header = ["model", *names, "params (inference)", "item-table params", "embedding compression", "model compression"]
    rows = [header, ["---"] * len(header)]
    for label, result in (("teacher (SASRec)", teacher), (f"student (STTD, {student['variant']} objective)", student)):
        compression, model_compression = result["embedding_compression"], result["model_compression"]
        rows.append(
            [
                label,
                *(f"{result['test'][name]:.4f}" for name in names),
                f"{result['params']['inference_total']:,}",
                f"{result['params']['item_table']:,}",
                f"{compression:.1f}x" if compression else "1x",
                f"{model_compression:.1f}x" if model_compression else "1x",
            ]
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main(argv):
    del argv
    teacher_dir = os.path.join(_WORKDIR.value, "teacher")
    student_dir = os.path.join(_WORKDIR.value, "student")
    teacher = train.train_and_evaluate(defaults.get_config("ml-100k", "teacher"), teacher_dir)
    student_config = defaults.get_config("ml-100k", "student")
    student_config.teacher_workdir = teacher_dir
    student = train.train_and_evaluate(student_config, student_dir)
    if teacher.get("preempted") or student.get("preempted"):
        logging.warning("Stopped by SIGTERM; rerun `make demo` to continue.")
        return
    print(f"\nMovieLens-100k, full ranking, test split (selected on valid); runs in {_WORKDIR.value}\n")
    print(comparison_table(teacher, student))


if __name__ == "__main__":
    app.run(main)
