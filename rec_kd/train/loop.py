"""The training loop: `train_and_evaluate(config, workdir)` for the teacher and the student alike.

This file is the story of a run, read top to bottom: set up (data, teacher, the jitted program),
resume, train an epoch, evaluate and select at its end, refit on train + valid if asked, stop on
preemption, finish (results.json). The pure step it drives is in `step.py`, the member stack and
its jitted program in `members.py`, the mesh in `sharding.py`, the workdir's preparation in
`prepare.py`, the run record and selection in `records.py`; a finished run is read back by
rec_kd/experiments/runs.py and reported by rec_kd/experiments/results.py.

Every run is a stack of N >= 1 *members* trained by one `jax.vmap`ped step:
`train_members(configs, workdirs)` trains models whose configs differ only in
`members.MEMBER_FIELDS` (seed, learning rate, loss weights, temperatures) at once on the same
batches, each with its own workdir, metrics, checkpoints and results.json; `train_and_evaluate`
is the N = 1 case.
"""

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from absl import logging

from rec_kd import checkpointing, evaluation
from rec_kd import data as data_lib
from rec_kd.defaults import ConfigError
from rec_kd.experiments import result_copies, results, runs
from rec_kd.train import members, prepare, records
from rec_kd.train.metric_writer import MetricWriter, quiet_library_logs
from rec_kd.train.sharding import Placement, check_batch_sizes

# The run in progress: its members (each with its run record, rec_kd/train/records.py) and the live state.


@dataclasses.dataclass
class Member:
    """One model of a run: its config, workdir, checkpoint managers, log and run record."""

    config: Any
    workdir: str
    latest: Any
    best: Any
    select: Any  # refit runs: checkpoints/select/, the validation-selected model (trained on train alone)
    record: dict
    writer: Any = None
    resumed_from_step: int | None = None


@dataclasses.dataclass
class Training:
    """A run in progress: its members, data, program and the live (donated) state.

    The loop position (phase, step, epoch, batch_in_epoch) is the same in every member's record;
    `lead` is the first member's record, read for that position.
    """

    members: list[Member]
    data: data_lib.SessionData
    placement: Placement
    buckets: tuple
    teacher: runs.Teacher | None
    run: members.Run
    state: Any
    train_and_valid: data_lib.Split | None  # the refit phase's training split

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.members[0].config

    @property
    def lead(self) -> dict:
        return self.members[0].record

    @property
    def finished(self) -> bool:
        return all(member.record["finished"] for member in self.members)


# ----------------------------------------------------------------------------------------------
# Set up: data, configs on disk, teacher, the jitted program.
# ----------------------------------------------------------------------------------------------


def set_up(configs: list, workdirs: Sequence[str], data: data_lib.SessionData | None) -> Training:
    members.check_members(configs, workdirs)
    placement = Placement.over_all_devices()
    config = configs[0]
    check_batch_sizes(config, placement.num_devices)
    data = data if data is not None else data_lib.load_configured(config)
    buckets = data_lib.bucket_lengths(config.data.max_len, tuple(config.data.buckets))
    steps_per_epoch = data_lib.num_train_batches(data.train, config.train.batch_size, buckets=buckets)
    prepare.write_configs(configs, workdirs, data, placement.replicated)
    logging.info(
        "%s: %d items, %d/%d/%d train/valid/test examples, %d steps an epoch, %d devices in %d processes, %d member(s).",
        data.name,
        data.num_items,
        len(data.train),
        len(data.valid),
        len(data.test),
        steps_per_epoch,
        placement.num_devices,
        jax.process_count(),
        len(configs),
    )
    teacher = None
    if config.stage == "student":
        # The teacher of the phase the run is in (a run resumed in its refit never loads the select
        # one); every member's records hold the same phase, so the first member's tell.
        teacher = runs.load_teacher(config, data, placement.replicated, starting_phase(workdirs[0]))
    run = members.build_run(configs, data, placement, teacher, steps_per_epoch)
    stack = [
        Member(
            config=member_config,
            workdir=workdir,
            latest=checkpointing.manager(os.path.join(workdir, "checkpoints", "latest"), max_to_keep=2),
            best=checkpointing.manager(os.path.join(workdir, "checkpoints", "best"), max_to_keep=1),
            select=checkpointing.manager(os.path.join(workdir, "checkpoints", "select"), max_to_keep=1)
            if member_config.train.refit_on_valid
            else None,
            record=records.new_record(),
        )
        for member_config, workdir in zip(configs, workdirs, strict=True)
    ]
    train_and_valid = data_lib.concatenate_splits(data.train, data.valid) if config.train.refit_on_valid else None
    return Training(stack, data, placement, buckets, teacher, run, run.state, train_and_valid)


def starting_phase(workdir: str) -> str:
    """The phase a process starts in: its newest checkpoint's, else 'refit' from a select record, else 'select'."""
    if runs.has_checkpoint(workdir, "latest"):
        return checkpointing.latest_phase(os.path.join(workdir, "checkpoints", "latest"))
    return "refit" if os.path.exists(os.path.join(workdir, runs.SELECT_RECORD)) else "select"


# ----------------------------------------------------------------------------------------------
# Resume: from the members' newest common checkpoint, else from their select records, else from scratch.
# ----------------------------------------------------------------------------------------------


def resume(training: Training) -> None:
    """Restores the state and records if a checkpoint exists; records this process's commit."""
    commit = prepare.git_commit()  # now, before any later checkout can change the files on disk
    run = training.run
    restored = checkpointing.restore_latest(
        [member.latest for member in training.members], checkpointing.abstract_like(run.take_member(training.state, 0))
    )
    if restored is not None:
        member_states, records = restored
        training.state = run.stack_members(*member_states)
        for member, record in zip(training.members, records, strict=True):
            member.record, member.resumed_from_step = record, int(record["step"])
        lead = training.lead
        logging.info("Resumed from step %d (epoch %d, batch %d).", lead["step"], lead["epoch"], lead["batch_in_epoch"])
    else:
        adopt_select_records(training)
        training.state = initial_state(training)
    for member in training.members:
        member.record.setdefault("commits", [])  # runs started before this field existed
        if not member.record["commits"] or member.record["commits"][-1] != commit:
            member.record["commits"].append(commit)
        member.writer = MetricWriter(member.workdir, enabled=jax.process_index() == 0)
    use_phase_teacher(training)


def initial_state(training: Training):
    """Fresh parameters for the phase the records are in (a codes table derived from that phase's teacher or data)."""
    split = training.train_and_valid if training.lead["phase"] == "refit" else training.data.train
    configs = [member.config for member in training.members]
    state = training.run.init_state(members.derived_tables(configs, training.data, split, training.teacher))
    if training.config.stage == "student" and training.config.model.get("init_from_teacher", False):
        state = training.run.with_teacher_body(state)
    return state


def adopt_select_records(training: Training) -> None:
    """Members with no checkpoint but a select_record.json each start at their refit, from fresh parameters.

    Why: a refit needs only the epochs its select phase chose (start_refit writes them down), so a
    run whose select phase ended on another machine refits here without that machine's checkpoints.
    The record must come from this recipe (write_configs checks it, as for a checkpoint, before
    anything is written), and every member needs one at one loop position (they share it);
    anything else is an error naming the file.
    """
    paths = [os.path.join(member.workdir, runs.SELECT_RECORD) for member in training.members]
    payloads = [runs.read_select_record(member.workdir) for member in training.members]
    if all(payload is None for payload in payloads):
        return
    present = [path for path, payload in zip(paths, payloads, strict=True) if payload is not None]
    for path, payload in zip(paths, payloads, strict=True):
        if payload is None:
            raise ConfigError(f"{path}: missing, while {present[0]} is there; vmapped members refit together, each from its own record")
    for member, path, payload in zip(training.members, paths, payloads, strict=True):  # its recipe: check_resumed_recipe
        record = {**records.new_record(), **payload["record"], "refit_from_record": path}
        # This machine's refit teacher is named afresh (use_phase_teacher); the recorded one says
        # whether it is the same training as the one the select phase was paired with.
        record["refit_teacher_of_record"] = record["teachers"].get("refit")
        record["teachers"] = {phase: used for phase, used in record["teachers"].items() if phase == "select"}
        member.record, member.resumed_from_step = record, int(record["step"])
    if len({member.record["step"] for member in training.members}) > 1:
        raise ConfigError(f"{paths}: the members' select records stop at different steps; they were not one vmapped run")
    selected = [member.record["best"]["epoch"] for member in training.members]
    logging.info("Refitting from %s: epochs %s selected on valid by an earlier process.", paths[0], selected)


def write_select_records(training: Training) -> None:
    """workdir/select_record.json for every member (process 0), written atomically as its refit starts."""
    if jax.process_index() != 0:
        return
    for member in training.members:
        payload = {"record": member.record, "config": member.config.to_dict()}
        result_copies.write_atomically(os.path.join(member.workdir, runs.SELECT_RECORD), json.dumps(payload, sort_keys=True))


def save_latest(training: Training) -> None:
    for i, member in enumerate(training.members):
        checkpointing.save(member.latest, training.lead["step"], training.run.take_member(training.state, i), member.record)


# ----------------------------------------------------------------------------------------------
# One epoch of training steps.
# ----------------------------------------------------------------------------------------------


def log_pending(training: Training, pending: list, started: float) -> float:
    """Fetches the queued steps' metrics (one transfer) and logs them for every unfinished member.

    The steps were only dispatched (JAX runs them asynchronously); the fetch waits for them to
    finish, so the interval is timed from `started` (the previous fetch, or the epoch's start) to
    the end of this fetch, checkpoint saves in between included. Timed before the fetch, a run's
    examples per second counted dispatch, not training (about 1.4x too high; until 2026-12-06).
    Returns the end of the interval, the start of the next one.
    """
    fetched = jax.device_get([metrics for metrics, _ in pending])  # every value (N,)
    finished = time.time()
    examples = sum(count for _, count in pending)
    lead = training.lead
    for i, member in enumerate(training.members):
        if records.is_active(member.record):
            member_metrics = [{name: value[i] for name, value in metrics.items()} for metrics in fetched]
            member.writer.log_train(lead["step"], lead["epoch"], member_metrics, examples, finished - started, member.record)
    return finished


def epoch_batches(training: Training) -> list:
    """The current epoch's batches, in the order fixed by (data_seed, phase split, epoch)."""
    config, lead = training.config, training.lead
    split = training.train_and_valid if lead["phase"] == "refit" else training.data.train
    return data_lib.train_batches(split, config.train.batch_size, data_seed=config.data_seed, epoch=lead["epoch"], buckets=training.buckets)


def train_epoch(training: Training, preemption: checkpointing.PreemptionFlag) -> bool:
    """Runs the current epoch from its next batch; False if SIGTERM stopped it (state saved)."""
    config, lead, run = training.config, training.lead, training.run
    batches = epoch_batches(training)
    refit = lead["phase"] == "refit"
    pending, interval_started = [], time.time()
    progress = training.members[0].writer.progress(
        len(batches), initial=lead["batch_in_epoch"], desc=f"{'refit ' if refit else ''}epoch {lead['epoch']}"
    )
    for index in range(lead["batch_in_epoch"], len(batches)):
        batch = batches[index]
        training.state, metrics = run.step(training.state, training.placement.put_batch(batch))
        pending.append((metrics, int(batch["weights"].sum())))
        for member in training.members:
            member.record["batch_in_epoch"], member.record["step"] = index + 1, member.record["step"] + 1
        step = lead["step"]
        if len(pending) >= config.train.log_every_steps or index + 1 == len(batches):
            interval_started = log_pending(training, pending, interval_started)
            progress.update(len(pending))
            pending = []
        if config.train.checkpoint_every_steps and step % config.train.checkpoint_every_steps == 0:
            save_latest(training)
        if preemption.should_stop(step):
            if pending:
                log_pending(training, pending, interval_started)
            save_latest(training)
            progress.close()
            return False
    progress.close()
    return True


# ----------------------------------------------------------------------------------------------
# End of epoch: evaluate, select on validation (select phase), then stop, continue or refit.
# ----------------------------------------------------------------------------------------------


def evaluate(training: Training, split: data_lib.Split) -> list[tuple[dict | None, dict | None]]:
    """(metrics, cold-target metrics) of every member on `split`."""
    num_members = len(training.members)
    if len(split) == 0:  # e.g. valid_fraction=0: nothing to measure
        return [(None, None)] * num_members
    run, ks = training.run, evaluation.DEFAULT_KS
    batches = data_lib.eval_batches(split, training.config.train.eval_batch_size, buckets=training.buckets)
    totals = evaluation.split_totals(
        lambda batch: run.metric_sums(training.state["params"], batch, run.constants), batches, training.placement.put_batch
    )
    member_totals = [{name: float(value[i]) for name, value in totals.items()} for i in range(num_members)]
    return [(evaluation.means_from_sums(t, "all", ks), evaluation.means_from_sums(t, "cold", ks)) for t in member_totals]


def member_epochs(member: Member) -> int:
    """Epochs of the member's current phase: the configured count, or in the refit its own selected count."""
    record = member.record
    return record["best"]["epoch"] if record["phase"] == "refit" else member.config.train.num_epochs


def evaluate_epoch(training: Training, due: list[bool], stops: list[bool]) -> None:
    """Evaluates the members whose evaluation is `due`, logs it, and (select phase) updates their selection.

    `stops[i]` becomes True where member i's early stopping ran out of patience.
    """
    refit = training.lead["phase"] == "refit"
    num_members = len(training.members)
    valid = [(None, None)] * num_members if refit else evaluate(training, training.data.valid)
    test = evaluate(training, training.data.test)
    for i, member in enumerate(training.members):
        record = member.record
        if not due[i]:
            continue
        entry = {"step": record["step"], "epoch": record["epoch"], "valid": valid[i][0], "test": test[i][0], "test_cold": test[i][1]}
        entry["losses"] = {name: value / max(record["epoch_loss_steps"], 1) for name, value in record["epoch_loss_sums"].items()}
        member.writer.log_eval(entry)
        record["refit_history" if refit else "history"].append(entry)
        if not refit:
            managers = [member.best] + ([member.select] if member.select is not None else [])
            stops[i] |= records.update_selection(record, entry, member.config.train, training.run.take_member(training.state, i), managers)


def use_phase_teacher(training: Training) -> None:
    """Students: distil from the teacher model that the current phase may see (runs.teacher_checkpoint).

    A resumed phase must find the teacher it started with: a teacher retrained or refit since then
    is an error, not a silent switch.
    """
    if training.config.stage != "student":
        return
    phase = training.lead["phase"]
    teacher = training.teacher
    wanted = runs.teacher_checkpoint(training.config.teacher_workdir, phase, len(training.data.valid) > 0)
    if teacher is None or teacher.checkpoint != wanted:
        teacher = runs.load_teacher(training.config, training.data, training.placement.replicated, phase)
        training.teacher, training.run.teacher_params = teacher, teacher.params
    used = {"checkpoint": teacher.checkpoint, "step": teacher.step, "digest": teacher.digest}
    for member in training.members:
        started_with = member.record.setdefault("teachers", {}).get(phase)
        if started_with is not None and not records.same_teacher(started_with, used):
            raise ConfigError(
                f"{training.config.teacher_workdir}/checkpoints/{teacher.checkpoint}: the teacher is {used}, "
                f"but this run's {phase} phase started with {started_with}; the teacher changed under a running student"
            )
        # A phase started before digests keeps its entry without one: its earlier steps' teacher was never digested.
        member.record["teachers"][phase] = used if started_with is None or "digest" in started_with else started_with
        if phase == "refit" and results.refit_teacher_as_recorded(member.record) is False:
            logging.warning(
                "%s: refits from the teacher training here (%s), not the one named where its select phase ran (%s): "
                "the refit pairs the selected epochs with another training of the teacher",
                member.workdir,
                used,
                member.record["refit_teacher_of_record"],
            )


def start_refit(training: Training) -> None:
    """Every member starts its refit on train + valid from fresh parameters, as it would alone.

    The optimizer state and the state's step (the dropout stream) restart with the parameters; the
    run record's step, which numbers the checkpoints, carries on.
    """
    epochs = [member.record["best"]["epoch"] for member in training.members]
    logging.info("Selected epochs %s on valid; refitting fresh models on train + valid.", epochs)
    for member in training.members:
        member.record.update(phase="refit", epoch=0, batch_in_epoch=0, select_done=False)
    # The record is written once: with the refit teacher named (another machine's refit compares its
    # own with it), or without it if that teacher cannot be loaded yet, so the selection is kept.
    try:
        use_phase_teacher(training)
    finally:
        write_select_records(training)
    training.state = initial_state(training)  # a codes table quantizes the refit teacher


def end_epoch(training: Training) -> None:
    """After an epoch: evaluate who is due; then each member stops, continues, ends its selection or its refit.

    With train.refit_on_valid a member whose selection has ended waits (riding along, ignored)
    until every member's has; then all start their refit together, and each refit ends at its
    own selected epoch count.
    """
    config = training.config
    for member in training.members:  # the loop position, the same in every record
        member.record["epoch"], member.record["batch_in_epoch"] = member.record["epoch"] + 1, 0
    epoch = training.lead["epoch"]
    active = [records.is_active(member.record) for member in training.members]
    is_last = [is_training and epoch >= member_epochs(member) for member, is_training in zip(training.members, active, strict=True)]
    due = [is_training and (epoch % config.train.eval_every_epochs == 0 or last) for is_training, last in zip(active, is_last, strict=True)]
    stops = list(is_last)
    if any(due):
        evaluate_epoch(training, due, stops)
    for i, member in enumerate(training.members):
        record = member.record
        record["epoch_loss_sums"], record["epoch_loss_steps"] = {}, 0
        if not active[i]:
            continue
        if stops[i] and record["phase"] == "refit":
            # The refit model is the one to ship and to distil from: it replaces best/ (select/ keeps
            # the validation-selected one).
            member_params = training.run.take_member(training.state, i)["params"]["model"]
            checkpointing.save(member.best, record["step"], {"params": member_params}, {"refit": True})
            record["refit_params_digest"] = checkpointing.params_digest(member_params)
            record["finished"] = True
        elif stops[i] and config.train.refit_on_valid:
            record["select_done"] = True
        else:
            record["finished"] = stops[i]
    if config.train.refit_on_valid and all(records.done_selecting(member.record) for member in training.members):
        start_refit(training)
    save_latest(training)


# ----------------------------------------------------------------------------------------------
# Finish: results.json for every member.
# ----------------------------------------------------------------------------------------------


def finish(training: Training, commands: Sequence[str] | None, wall_s: float) -> list[dict]:
    all_results = []
    for i, member in enumerate(training.members):
        member.writer.close()
        member_results = results.build_results(
            member.config,
            training.data,
            member.record,
            training.run.take_member(training.state, i),
            training.teacher,
            member.resumed_from_step,
            training.placement.num_devices,
            wall_s,
            commands[i] if commands else None,
        )
        if jax.process_index() == 0:
            with open(os.path.join(member.workdir, "results.json"), "w") as f:
                json.dump(member_results, f, indent=2, sort_keys=True)
        all_results.append(member_results)
    return all_results


# ----------------------------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------------------------


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, command: str | None = None, data: data_lib.SessionData | None = None
) -> dict:
    """Trains the stage named by the config in `workdir` (resuming if it holds a checkpoint).

    Returns the results dict also written to workdir/results.json, or {'preempted': True, ...}
    when SIGTERM stopped the run (a checkpoint was saved; rerun the same command to continue).
    `command` is recorded in results.json as how to reproduce the run (default: this process's argv).
    `data` replaces the dataset the config names, for experiments on a modified copy of it (a
    resumed run must be given the same data).
    """
    return train_members([config], [workdir], None if command is None else [command], data)[0]


def train_members(
    configs: Sequence[ml_collections.ConfigDict],
    workdirs: Sequence[str],
    commands: Sequence[str] | None = None,
    data: data_lib.SessionData | None = None,
) -> list[dict]:
    """Trains N members at once with one vmapped step; returns each member's results (see above).

    The configs may differ only in MEMBER_FIELDS. The members share every batch (the data order
    depends on data_seed alone) and the loop position; each has its own metrics.jsonl,
    checkpoints, early stopping and results.json in its workdir, and ends as it would alone.
    Resuming restores every member at the newest step that all of their checkpoints hold.
    Phase 'select' trains on train and selects on valid; with train.refit_on_valid, phase 'refit'
    then trains a fresh model on train + valid for the selected number of epochs.
    """
    started = time.time()
    quiet_library_logs()
    training = set_up(list(configs), workdirs, data)
    resume(training)
    with checkpointing.PreemptionFlag() as preemption:
        while not training.finished:
            if not train_epoch(training, preemption):
                for member in training.members:
                    member.writer.close()
                step = training.lead["step"]
                logging.warning("Preempted at step %d; rerun the same command to continue.", step)
                return [{"preempted": True, "step": step}] * len(training.members)
            end_epoch(training)
    return finish(training, commands, time.time() - started)
