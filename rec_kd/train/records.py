"""The run record: what a checkpoint's meta holds, so a resumed run ends exactly like an unbroken one.

Pure functions of records: a new one, the validation selection and early stopping, and whether two
teacher entries name the same teacher model.
"""

from absl import logging

from rec_kd import checkpointing


def new_record() -> dict:
    return {
        "phase": "select",  # 'select' (train on train, select on valid), then optionally 'refit'
        "select_done": False,  # this member's selection has ended (it waits for the others to start the refit)
        "step": 0,  # optimizer steps taken, over both phases
        "epoch": 0,  # epoch in progress (of the current phase)
        "batch_in_epoch": 0,  # next batch of that epoch
        "history": [],  # one entry per evaluation: step, epoch, valid, test, test_cold, losses
        "best": None,  # the history entry selected on validation
        "refit_history": [],  # refit phase: one entry per evaluation (test only)
        "evals_since_best": 0,
        "epoch_loss_sums": {},  # running sums of this epoch's training losses
        "epoch_loss_steps": 0,
        "train_examples": 0,
        "train_seconds": 0.0,
        "finished": False,
        "commits": [],  # the code version of every process that trained this run, in order
        "teachers": {},  # students: phase -> the teacher model it distilled from ({'checkpoint', 'step', 'digest'})
        "refit_params_digest": None,  # refit runs: checkpointing.params_digest of the refit model (best/ at the end)
        "refit_from_record": None,  # the select_record.json this run's refit started from, when no checkpoint held its select phase
        "refit_teacher_of_record": None,  # from that record: the refit teacher named where the select phase ran
    }


def update_selection(record: dict, entry: dict, train_config, state, selected_checkpoints: list) -> bool:
    """Keeps the best-valid evaluation (its parameters in every manager given); True when patience runs out.

    An evaluation counts as better only when it beats the best by more than
    `train_config.early_stop_min_delta`. With an empty valid split (valid_fraction=0, the authors'
    setting) the newest evaluation wins.
    """
    metric, min_delta = train_config.selection_metric, train_config.early_stop_min_delta
    if record["best"] is None or entry["valid"] is None or entry["valid"][metric] > record["best"]["valid"][metric] + min_delta:
        record["best"], record["evals_since_best"] = dict(entry), 0
        if selected_checkpoints:  # the trainer's: best/ (and select/); the digest names what they hold
            record["best"]["params_digest"] = checkpointing.params_digest(state["params"]["model"])
        for checkpoints in selected_checkpoints:
            checkpointing.save(checkpoints, entry["step"], {"params": state["params"]["model"]}, {"valid": entry["valid"]})
    else:
        record["evals_since_best"] += 1
    patience = train_config.early_stop_patience
    if patience and record["evals_since_best"] >= patience:
        logging.info("No validation improvement in %d evaluations: stopping early.", patience)
        return True
    return False


def is_active(record: dict) -> bool:
    """Still training in its phase: neither finished nor waiting for the refit."""
    return not record["finished"] and not done_selecting(record)


def done_selecting(record: dict) -> bool:
    """In the select phase, with its selection ended (waiting for the refit)."""
    return record["phase"] == "select" and record.get("select_done", False)


def same_teacher(started_with: dict, used: dict) -> bool:
    """The same teacher model: checkpoint and step, and the parameters' digest where the run recorded one (since 2026-12-03)."""
    return (started_with["checkpoint"], started_with["step"], started_with.get("digest", used["digest"])) == (
        used["checkpoint"],
        used["step"],
        used["digest"],
    )
