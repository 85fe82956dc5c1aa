"""Reproduce OD-Rec's grid: teachers, students at three compressions, seeds, ablations. Resumable.

  python -m launch.reproduce --root=/tmp/odrec --data_dir=../shared/data            # the whole grid
  python -m launch.reproduce --root=/tmp/odrec_smoke --data_dir=../shared/data --smoke  # minutes, on slices
  python -m launch.reproduce --root=... --datasets=tmall --seeds=0 --rows=teacher,main,ce

Every run is an ordinary `python -m rec_kd.main` command in its own workdir, ROOT/DATASET/ROW_sSEED,
run by the sweep runner (rec_kd.train.sweeps.run_jobs; output in WORKDIR/stdout.log), --parallel at a
time: first every dataset's teacher, then the students in priority order (the main row's seed 0 of
every dataset, then seeds 1, 2, ..., then x100, x300 and the ablations), so a grid cut short holds
the headline rows. A finished run (results.json present) is skipped and an interrupted one resumes,
so rerunning the same command continues the grid. A finished run whose recorded config differs from
what the grid would run now (a default changed since) is kept, with a warning naming each field.
Nothing is written into the repository unless --keep_results_in names a folder there
(docs/results): each run's results are then copied into it the moment the run finishes, so they
outlive this machine, and a run kept there under the grid's recipe is not trained again on a new
machine (its teacher only where a student still needs it). A refit run's select record is kept
there too as its refit starts (FOLDER/select_records/), so a run whose session ended during its
refit refits on the next machine without selecting again; a teacher whose students all refit so
refits from its own record too (its select-phase model is then never needed). `launch/report.py`
turns ROOT (and those copies) into tables and plots.

Protocol (--protocol): 'refit' (default) selects each run's epoch count on valid, then refits it on
train + valid and reports that model; students distil from the teacher's validation-selected model
while selecting and from its refit model while refitting (docs/method.md, "The
protocol"). 'select' reports the validation-selected model itself.

Rows (students distil the dataset's seed-0 teacher):
  teacher   SASRec
  codes     the codes student: pq, 16 codebooks of 128 from the teacher's table (~29x in bytes),
            a learned copy bonus, full objective, every seed
  codes_x100  the same at the pq setting nearest 100x in bytes
  codes_svd the codes row with codes from a truncated SVD of the training sessions (RecJPQ; no teacher table)
  main      STTD at the paper's setting (Tmall ~27x, RetailRocket ~31x), full objective, every seed
  x100      STTD at the main factors, the rank nearest 100x
  x300      STTD K=3, the largest equal rank giving >= 300x
  ce, kd, kd_cl   objective ablations at the main setting (no distillation; soft targets; + contrastive)
  tt        plain TT (t = 1) at the largest rank not above the main setting's parameter count
  dense     the uncompressed table with the full objective (what compression costs)
"""

import ast
import dataclasses
import json
import os
import shutil
import sys

import ml_collections
from absl import app, flags, logging

from rec_kd import defaults
from rec_kd.compress import codes, sttd
from rec_kd.data import load_dataset
from rec_kd.experiments import result_copies, runs
from rec_kd.experiments.runs import read_run_config
from rec_kd.train import loop, sweeps

ROWS = ("teacher", "codes", "codes_x100", "codes_svd", "main", "x100", "x300", "ce", "kd", "kd_cl", "tt", "dense")
SEEDED_ROWS = ("teacher", "codes", "main")  # rows run with every seed (the teacher only for seed 0 unless asked)
# The codes student (docs/findings.md, "Codes"): pq codes of the teacher's table and a learned copy bonus.
# ~30x: 16 codebooks of 128 (Tmall 29.1x in bytes); x100: the pq setting whose bytes are nearest 100x.
CODES_OPTIONS = {"method": "pq", "num_codebooks": 16, "codebook_size": 128, "source": "teacher"}

_ROOT = flags.DEFINE_string("root", None, "Folder for every run's workdir (outside the repository).")
_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Folder holding the dataset folders.")
_DATASETS = flags.DEFINE_list("datasets", ["tmall", "retailrocket"], "Datasets to run.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the main student row.")
_ROWS = flags.DEFINE_list("rows", list(ROWS), f"Rows to run, from {ROWS}.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Run the whole grid on small slices of the data (minutes on a CPU).")
_PROTOCOL = flags.DEFINE_enum("protocol", "refit", ["refit", "select"], "Report the refit model (default) or the valid-selected one.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.")
_PARALLEL = flags.DEFINE_integer(
    "parallel", 1, "Runs at a time (more than 1 pays where one run leaves the device idle, e.g. one GPU at batch 100)."
)
_KEEP_RESULTS_IN = flags.DEFINE_string(
    "keep_results_in",
    None,
    "Copy each run's results (and eval records) into this folder as it finishes, e.g. docs/results, and skip the runs "
    "kept there under the grid's recipe: workdirs stay on this machine, a later session may start on another "
    "(rec_kd/experiments/result_copies.py).",
)
flags.mark_flag_as_required("root")

# Smoke runs: fewer examples than the trainer's own smoke slice, so the whole grid takes minutes.
SMOKE_OVERRIDES = ("--config.data.max_train_examples=600", "--config.data.max_eval_examples=300")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    dataset: str
    row: str
    seed: int
    config_arg: str  # the words after ':' in --config
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.row}_s{self.seed}"


def table_overrides(spec: sttd.STTDSpec) -> tuple[str, ...]:
    return (
        f"--config.table.item_factors={sweeps.format_value(spec.item_factors)}",
        f"--config.table.dim_factors={sweeps.format_value(spec.dim_factors)}",
        f"--config.table.ranks={sweeps.format_value(spec.ranks)}",
        f"--config.table.t={spec.t}",
    )


def main_spec(dataset: str, num_items: int) -> sttd.STTDSpec:
    """The paper's setting where it has one, else the suggested factorisation at rank 60."""
    table = defaults.get_config(dataset, "student").table
    if table.item_factors:
        return sttd.STTDSpec(tuple(table.item_factors), tuple(table.dim_factors), tuple(table.ranks), table.t)
    return sttd.suggest_spec(num_items + 1, 128, table.ranks[0], table.t, 2)


def x100_spec(main: sttd.STTDSpec) -> sttd.STTDSpec:
    """The main setting's factors at the rank (a multiple of t) whose compression is nearest 100x."""
    candidates = [dataclasses.replace(main, ranks=(rank,)) for rank in range(main.t, main.ranks[0] + 1, main.t)]
    return min(candidates, key=lambda spec: abs(sttd.compression_ratio(spec) - 100))


def x300_spec(num_rows: int, dim: int = 128) -> sttd.STTDSpec:
    """Three cores with the largest even rank whose compression is still >= 300x."""
    best = None
    for rank in range(2, 65, 2):
        spec = sttd.suggest_spec(num_rows, dim, rank, 2, 3)
        if sttd.compression_ratio(spec) >= 300:
            best = spec
    if best is None:
        raise ValueError(f"no 3-core STTD of {num_rows} rows reaches 300x")
    return best


def tt_spec(main: sttd.STTDSpec) -> sttd.STTDSpec:
    """t = 1 on the main factors at the largest rank whose parameter count does not exceed the main setting's."""
    factors = {"item_factors": main.item_factors, "dim_factors": main.dim_factors, "t": 1}
    return sttd.spec_from_options(main.num_rows, main.dim, sttd.budget_options(main.num_rows, main.dim, sttd.num_params(main), factors))


def codes_x100_options(num_items: int, dim: int = 128) -> dict:
    """The pq setting (codebooks dividing d, sizes 16 to 256) whose table bytes are nearest 100x the fp32 table's."""
    dense_bytes = 4 * (num_items + 1) * dim
    settings = [(m, k) for m in range(1, dim + 1) if dim % m == 0 for k in (16, 32, 64, 128, 256)]

    def distance(setting):
        return abs(dense_bytes / codes.CodesSpec(num_items + 1, dim, setting[0], setting[1], "pq").num_bytes() - 100)

    num_codebooks, codebook_size = min(settings, key=distance)
    return {**CODES_OPTIONS, "num_codebooks": num_codebooks, "codebook_size": codebook_size}


def codes_overrides(options: dict) -> tuple[str, ...]:
    return tuple(f"--config.table.codes.{name}={value}" for name, value in options.items()) + ("--config.model.copy_bonus=True",)


def grid(dataset: str, num_items: int, rows, seeds, smoke: bool, data_dir: str, root: str, refit: bool = True) -> list[RunSpec]:
    main = main_spec(dataset, num_items)
    tables = {
        "main": main,
        "x100": x100_spec(main),
        "x300": x300_spec(num_items + 1),
        "ce": main,
        "kd": main,
        "kd_cl": main,
        "tt": tt_spec(main),
        "dense": main,  # moot: a dense table ignores the STTD fields
    }
    codes_rows = {"codes": CODES_OPTIONS, "codes_x100": codes_x100_options(num_items), "codes_svd": {**CODES_OPTIONS, "source": "svd"}}
    variants = {"main": "full", "x100": "full", "x300": "full", "ce": "ce", "kd": "kd", "kd_cl": "kd_cl", "tt": "tt", "dense": "dense"}
    teacher_dir = os.path.join(root, dataset, "teacher_s0")
    common = (f"--config.data_dir={data_dir}",) + (SMOKE_OVERRIDES if smoke else ())
    common += ("--config.train.refit_on_valid=True",) if refit else ()
    runs = []
    for row in rows:
        for seed in seeds if row in ("main", "codes") else [0]:
            words = ["teacher"] if row == "teacher" else ["student", "codes" if row in codes_rows else variants[row]]
            overrides = common + (f"--config.seed={seed}",)
            if row in codes_rows:
                overrides += (f"--config.teacher_workdir={teacher_dir}",) + codes_overrides(codes_rows[row])
            elif row != "teacher":
                overrides += (f"--config.teacher_workdir={teacher_dir}",) + table_overrides(tables[row])
            runs.append(RunSpec(dataset, row, seed, ",".join(words + (["smoke"] if smoke else [])), overrides))
    return runs


def protocol_mismatch(workdir: str, refit: bool) -> str:
    """Why a run already in `workdir` cannot join a grid of this protocol ('' when it can)."""
    if not os.path.exists(os.path.join(workdir, "config.json")):
        return ""
    ran_refit = bool(read_run_config(workdir).train.get("refit_on_valid", False))
    if ran_refit == refit:
        return ""
    return f"ran with train.refit_on_valid={ran_refit}, but --protocol={'refit' if refit else 'select'}"


def config_from_overrides(dataset: str, config_arg: str, overrides: tuple[str, ...]) -> ml_collections.ConfigDict:
    """The config `rec_kd.main --config=configs/DATASET.py:CONFIG_ARG *overrides` starts from (tables not yet resolved)."""
    config = defaults.get_config(dataset, config_arg)
    prefix = "--config."
    values = {}
    for override in overrides:
        if override.startswith(prefix) and "=" in override:
            key, text = override[len(prefix) :].split("=", 1)
            try:
                values[key] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                values[key] = text  # a bare string, as the flag parser reads it
    config.update_from_flattened_dict(values)
    return config


def command(run: RunSpec, root: str) -> list[str]:
    config_file = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", f"{run.dataset.replace('-', '_')}.py"
    )
    workdir = os.path.join(root, run.dataset, run.name)
    return [sys.executable, "-m", "rec_kd.main", f"--config={config_file}:{run.config_arg}", f"--workdir={workdir}", *run.overrides]


def priority(run: RunSpec, datasets: list[str]) -> tuple[int, int, int]:
    """Students' order: row (as in ROWS), then seed, then dataset, so every dataset's headline comes first."""
    return ROWS.index(run.row), run.seed, datasets.index(run.dataset)


def finished_elsewhere(copy: dict | None, expected: ml_collections.ConfigDict) -> bool:
    """Whether a run's kept copy (--keep_results_in) finished under the recipe the grid runs now.

    Why: a grid spans sessions, and a later one may start on another machine without the workdirs;
    a run kept from there is not trained again here (a teacher only when no student still needs its
    checkpoints). A copy of another recipe is named and the run is trained again.
    """
    if copy is None:
        return False
    resolved = runs.with_resolved_table(expected, lambda: sweeps.catalogue(expected))
    drift = runs.recipe_drift(ml_collections.ConfigDict(copy["config"]), resolved, "the grid")
    if drift:
        logging.warning("%s finished under another recipe (%s); the grid trains the run again.", copy["_copy"], "; ".join(drift))
    return not drift


def keep_or_warn(workdir: str, folder: str) -> None:
    """Keeps a finished run (result_copies.keep); a copy that fails is a warning: the grid goes on, and a report can keep the run later."""
    try:
        logging.info("kept %s", result_copies.keep(workdir, folder))
    except (OSError, ValueError, KeyError) as error:
        logging.warning("%s: not kept in %s (%s)", workdir, folder, error)


def keep_finished(folder: str):
    """on_exit for run_jobs: copies each run that finished into `folder` (rec_kd/experiments/result_copies.py) as it ends."""

    def keep(job: sweeps.Job, code: int) -> None:
        workdir = os.path.dirname(job.log_path)
        if code == 0 and sweeps.run_is_finished(workdir):
            keep_or_warn(workdir, folder)

    return keep


def keep_select_records(workdirs: list[str], folder: str):
    """on_poll for run_jobs: copies the select record of every run that wrote one (result_copies.keep_select_record)."""

    def keep() -> None:
        for workdir in workdirs:
            try:
                kept = result_copies.keep_select_record(workdir, folder)
            except (OSError, result_copies.CopyError) as error:
                logging.warning("%s: select record not kept (%s)", workdir, error)
                continue
            if kept:
                logging.info("kept %s", kept)

    return keep


def refit_from_record(workdir: str) -> bool:
    """Whether the finished run in `workdir` refit from a select record (so it holds no select-phase model)."""
    with open(os.path.join(workdir, "results.json")) as f:
        return bool(json.load(f).get("refit_from_record"))


def seed_from_select_record(workdir: str, copy_path: str, expected: ml_collections.ConfigDict) -> bool:
    """Puts a kept select record into a workdir that has not trained here, so its run starts at the refit.

    Why: the select phase ran in an earlier session, perhaps on another machine; its record holds
    everything the refit needs. A record of another recipe is named and not used (the run then
    selects again). Returns whether the workdir was seeded.
    """
    if runs.has_trained(workdir) or not os.path.exists(copy_path):
        return False
    try:
        ran = ml_collections.ConfigDict(runs.read_select_record_file(copy_path)["config"])
    except (OSError, defaults.ConfigError) as error:
        sys.exit(f"{error}; move {copy_path} away to select that run again")
    drift = runs.recipe_drift(ran, runs.with_resolved_table(expected, lambda: sweeps.catalogue(expected)), "the grid")
    if drift:
        logging.warning("%s ran its select phase under another recipe (%s); the run selects again.", copy_path, "; ".join(drift))
        return False
    os.makedirs(workdir, exist_ok=True)
    shutil.copyfile(copy_path, os.path.join(workdir, runs.SELECT_RECORD))
    logging.info("%s refits from %s (its select phase ran earlier).", workdir, copy_path)
    return True


def run_stage(jobs: list[sweeps.Job], parallel: int, keep_in: str | None = None) -> None:
    """Runs `jobs` to the end; exits naming what failed, or what SIGTERM stopped."""
    codes = sweeps.run_jobs(
        jobs,
        parallel=parallel,
        on_exit=keep_finished(keep_in) if keep_in else None,
        on_poll=keep_select_records([os.path.dirname(job.log_path) for job in jobs], keep_in) if keep_in else None,
    )
    failed = {name: code for name, code in codes.items() if code > 0}
    if failed:
        sys.exit(f"failed: {failed}; see their stdout.log, then rerun to resume the grid")
    if any(not sweeps.run_is_finished(os.path.dirname(job.log_path)) for job in jobs):
        sys.exit("stopped (SIGTERM) before the grid finished; rerun the same command to continue")


def main(argv):
    del argv
    unknown = set(_ROWS.value) - set(ROWS)
    if unknown:
        raise app.UsageError(f"unknown rows {sorted(unknown)}; expected some of {ROWS}")
    rows = [row for row in ROWS if row in _ROWS.value]
    root = os.path.abspath(_ROOT.value)
    grid_runs = []
    for dataset in _DATASETS.value:
        num_items = load_dataset(dataset, _DATA_DIR.value).num_items
        seeds = [int(s) for s in _SEEDS.value]
        grid_runs += grid(dataset, num_items, rows, seeds, _SMOKE.value, _DATA_DIR.value, root, _PROTOCOL.value == "refit")
    grid_runs.sort(key=lambda run: priority(run, _DATASETS.value))  # teachers first: ROWS starts with them
    keep_in = os.path.abspath(_KEEP_RESULTS_IN.value) if _KEEP_RESULTS_IN.value else None
    try:
        kept = {(copy["dataset"], copy["_run"]): copy for copy in result_copies.read_kept(keep_in)} if keep_in else {}
    except result_copies.CopyError as error:
        sys.exit(str(error))
    teachers, students, skipped = [], [], 0
    kept_teachers, elsewhere = {}, 0
    teacher_runs, select_teacher_needed = {}, set()  # job name -> (workdir, expected); datasets whose select-phase teacher a student needs
    for run in grid_runs:
        cmd = command(run, root)
        workdir = os.path.join(root, run.dataset, run.name)
        mismatch = "" if _DRY_RUN.value else protocol_mismatch(workdir, _PROTOCOL.value == "refit")
        if _DRY_RUN.value:
            print(" ".join(cmd))
        elif mismatch:
            sys.exit(f"{workdir}/config.json: {mismatch}; use another --root")
        else:
            expected = config_from_overrides(run.dataset, run.config_arg, run.overrides)
            try:
                sweeps.check_recipe(workdir, expected, "the grid")
            except sweeps.SweepError as error:
                sys.exit(str(error))
            if sweeps.run_is_finished(workdir):
                skipped += 1
                if keep_in:  # finished before the flag, or its copy failed: kept now
                    keep_or_warn(workdir, keep_in)
                    keep_select_records([workdir], keep_in)()
                continue
            job = sweeps.Job(f"{run.dataset}/{run.name}", cmd, os.path.join(workdir, "stdout.log"))
            if run.row == "teacher":
                teacher_runs[job.name] = (workdir, expected)
            if finished_elsewhere(kept.get((run.dataset, run.name)), expected):
                if run.row == "teacher":
                    kept_teachers[run.dataset] = job  # trained again only for the students still to run
                else:
                    elsewhere += 1
                continue
            if run.row != "teacher" and keep_in:
                seed_from_select_record(workdir, result_copies.select_record_copy(keep_in, run.dataset, run.name), expected)
            if run.row != "teacher" and loop.starting_phase(workdir) == "select":
                select_teacher_needed.add(run.dataset)
            (teachers if run.row == "teacher" else students).append(job)
    if _DRY_RUN.value:
        return
    needed = {job.name.split("/")[0] for job in students}
    teachers += [job for dataset, job in kept_teachers.items() if dataset in needed]
    for job in teachers:  # a teacher none of whose students selects here needs no select phase either
        dataset = job.name.split("/")[0]
        if keep_in and dataset not in select_teacher_needed:
            workdir, expected = teacher_runs[job.name]
            seed_from_select_record(workdir, result_copies.select_record_copy(keep_in, dataset, os.path.basename(workdir)), expected)
    for dataset in select_teacher_needed:  # a teacher that refit from its record here has no select-phase model to give
        teacher_dir = os.path.join(root, dataset, "teacher_s0")
        if sweeps.run_is_finished(teacher_dir) and refit_from_record(teacher_dir) and not runs.has_checkpoint(teacher_dir, "select"):
            sys.exit(
                f"{teacher_dir}: refit without its select phase (from a select record), but a {dataset} student here still "
                "selects on valid and needs that model; move the teacher's workdir away to train it again in full"
            )
    elsewhere += sum(dataset not in needed for dataset in kept_teachers)
    logging.info(
        "%d runs finished%s (skipped); running %d teachers, then %d students, %d at a time (logs: WORKDIR/stdout.log).",
        skipped,
        f", {elsewhere} kept in {keep_in} from another machine" if keep_in else "",
        len(teachers),
        len(students),
        _PARALLEL.value,
    )
    run_stage(teachers, _PARALLEL.value, keep_in)  # every student needs its dataset's finished teacher
    run_stage(students, _PARALLEL.value, keep_in)


if __name__ == "__main__":
    app.run(main)
