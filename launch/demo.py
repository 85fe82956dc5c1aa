"""`make demo`: teacher -> student on the embedded MovieLens-100k, then one comparison table.

  python -m launch.demo --workdir=workdirs/demo

Each stage is an ordinary `rec_kd.main` run in its own sub-workdir, so rerunning the demo resumes
or reuses what is already trained. A first run's table is read as the method's result, so it says
how long each model trained and how flat its validation curve was at the end: a model still
climbing is not a converged one (the ml-100k settings and how they were chosen: docs/data.md).
"""

import json
import os

from absl import app, flags, logging

from rec_kd import defaults, evaluation
from rec_kd.train import loop

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/demo", "Where the teacher and student runs go.")


def valid_curve(workdir: str, metric: str = "hr@20") -> list[float]:
    """The valid metric after each epoch, from metrics.jsonl (a resumed run's last entry per epoch)."""
    by_epoch = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            entry = json.loads(line)
            if entry["split"] == "valid":
                by_epoch[entry["epoch"]] = entry[metric]
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def training_note(curve: list[float]) -> str:
    """'4 epochs; valid HR@20 0.1523 -> 0.1601 -> 0.1634 (+2.1% in the last epoch)'."""
    shown = " -> ".join(f"{value:.4f}" for value in curve[-3:])
    gain = f" ({(curve[-1] - curve[-2]) / curve[-2]:+.1%} in the last epoch)" if len(curve) > 1 and curve[-2] > 0 else ""
    return f"{len(curve)} epoch{'s' if len(curve) != 1 else ''}; valid HR@20 {shown}{gain}"


def comparison_table(teacher: dict, student: dict, curves: tuple[list[float], list[float]]) -> str:
    """Markdown table: test metrics (selected on valid), parameters, compression, and how long each trained."""
    names = evaluation.metric_names()
    header = ["model", *names, "params (inference)", "item-table params", "embedding compression", "model compression", "training"]
    rows = [header, ["---"] * len(header)]
    labelled = (("teacher (SASRec)", teacher), (f"student (STTD, {student['variant']} objective)", student))
    for (label, result), curve in zip(labelled, curves, strict=True):
        compression, model_compression = result["embedding_compression"], result["model_compression"]
        rows.append(
            [
                label,
                *(f"{result['test'][name]:.4f}" for name in names),
                f"{result['params']['inference_total']:,}",
                f"{result['params']['item_table']:,}",
                f"{compression:.1f}x" if compression else "1x",
                f"{model_compression:.1f}x" if model_compression else "1x",
                training_note(curve),
            ]
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main(argv):
    del argv
    teacher_dir = os.path.join(_WORKDIR.value, "teacher")
    student_dir = os.path.join(_WORKDIR.value, "student")
    teacher = loop.train_and_evaluate(defaults.get_config("ml-100k", "teacher"), teacher_dir)
    student_config = defaults.get_config("ml-100k", "student")
    student_config.teacher_workdir = teacher_dir
    student = loop.train_and_evaluate(student_config, student_dir)
    if teacher.get("preempted") or student.get("preempted"):
        logging.warning("Stopped by SIGTERM; rerun `make demo` to continue.")
        return
    print(f"\nMovieLens-100k, full ranking, test split (selected on valid); runs in {_WORKDIR.value}\n")
    print(comparison_table(teacher, student, (valid_curve(teacher_dir), valid_curve(student_dir))))
    print(
        "\n'training': epochs run and the last valid HR@20 values; a small last-epoch gain means the curve has flattened "
        "(longer training: docs/data.md, 'MovieLens-100k: the demo's settings')."
    )


if __name__ == "__main__":
    app.run(main)
