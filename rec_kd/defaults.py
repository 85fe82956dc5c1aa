"""The one base config that every file in configs/ specialises.

`get_config(dataset, arg)` builds an ml_collections.ConfigDict for a dataset; `arg` is the
comma-separated words after the config file's ':' — `teacher` (default) or `student`, optionally
`smoke`, optionally a student variant (`full`, `ce`, `kd`, `kd_cl`; or a table: `tt`, `dense`,
`lowrank`, `hash`, `qr`, `mixed_dim`, each with the full objective). Every
hyperparameter lives here; flags are only --config and --workdir.

`get_config("custom", arg)` (configs/custom.py) is the same config for a dataset of the user's
own, given by `data.format` and `data.path` (docs/data.md). Its `dataset` field is computed from
those two, so a student is refused a teacher trained on another file by the same check that
refuses a Tmall teacher to a RetailRocket student.
"""

import os

import ml_collections


class ConfigError(ValueError):
    """A config or teacher that cannot work, found before any training."""


DATASETS = ("tmall", "retailrocket", "yoochoose1_64", "beauty", "ml-100k")
CUSTOM = "custom"
# data.format of a custom dataset read from a file: the reader of rec_kd/data that reads data.path
# (data.format="synthetic" reads no file: rec_kd/data/synthetic.py generates the sessions).
FORMATS = ("srgnn", "user_sequences", "inter", "events")
# Table kinds of rec_kd/compress besides the main 'sttd': each is also a student variant.
TABLE_VARIANTS = ("tt", "dense", "lowrank", "hash", "qr", "mixed_dim", "codes")
VARIANTS = ("full", "ce", "kd", "kd_cl", *TABLE_VARIANTS)

# The paper's main STTD settings (METHOD.md); other datasets get a factorisation suggested from
# their catalogue size (empty item_factors).
MAIN_TABLES = {
    "tmall": dict(item_factors=(169, 241), dim_factors=(16, 8), ranks=(60,), t=2),
    "retailrocket": dict(item_factors=(117, 316), dim_factors=(16, 8), ranks=(60,), t=2),
}
# table.row_order of every student on a MAIN_TABLES dataset (the main one, its ablations, x100),
# chosen for the main student on the dataset's valid split (docs/findings.md,
# "Row order"). Tmall: shuffled rows gain 0.0175 HR@20 and 0.024 MRR@20 over id order after one epoch.
# RetailRocket: id order leads at every one of the first four epochs, by 0.010 to 0.018 HR@20
# (0.4147, 0.4281, 0.4290, 0.4271 against 0.3963, 0.4109, 0.4150, 0.4172).
MAIN_ROW_ORDER = {"tmall": "shuffled", "retailrocket": "id"}


def parse_arg(arg: str) -> tuple[str, bool, str]:
    """'student,smoke,kd' -> ('student', True, 'kd'); unknown words are an error."""
    words = [word for word in (arg or "").split(",") if word]
    stage, smoke, variant = "teacher", False, None
    for word in words:
        if word in ("teacher", "student"):
            stage = word
        elif word == "smoke":
            smoke = True
        elif word in VARIANTS:
            variant = word
        else:
            raise ValueError(f"unknown config word {word!r} in {arg!r}; expected teacher|student, smoke, or one of {VARIANTS}")
    if variant is not None and stage != "student":
        raise ValueError(f"variant {variant!r} needs the 'student' stage (config argument {arg!r})")
    return stage, smoke, variant or ("full" if stage == "student" else "teacher")


def get_config(dataset: str, arg: str = "") -> ml_collections.ConfigDict:
    if dataset not in (*DATASETS, CUSTOM):
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS} or {CUSTOM!r}")
    stage, smoke, variant = parse_arg(arg)
    config = ml_collections.ConfigDict()
    # Dataset name as `rec_kd.data.inspect` knows it.
    config.dataset = dataset
    # Folder holding the dataset folders (tmall/, retailrocket/, ...); unused for ml-100k.
    config.data_dir = "../shared/data"
    # 'teacher' trains SASRec; 'student' distils it into the STTD student.
    config.stage = stage
    # 'teacher' for teachers; for students the objective/table ablation (see VARIANTS).
    config.variant = variant
    # A quick run on a slice of the real data (full catalogue) for tests and trials.
    config.smoke = smoke
    # Model initialisation and dropout seed.
    config.seed = 0
    # Data-order seed, separate from `seed` so runs that differ only in `seed` share batches.
    config.data_seed = 0
    # The teacher's workdir (students only): its best-valid checkpoint is restored and frozen.
    config.teacher_workdir = ""

    config.distributed = ml_collections.ConfigDict()
    # Multi-process runs (rec_kd/train/distributed.py; the REC_KD_* environment variables fill blanks):
    # process 0's coordinator host:port ('' = a single process unless the environment names one).
    config.distributed.coordinator_address = ""
    # Number of processes (0 = from REC_KD_NUM_PROCESSES).
    config.distributed.num_processes = 0
    # This process's index (-1 = from REC_KD_PROCESS_ID).
    config.distributed.process_id = -1
    # Let JAX detect the cluster (TPU slices, Slurm, Open MPI) instead.
    config.distributed.auto = False

    config.data = ml_collections.ConfigDict()
    # Sequences keep their last max_len items.
    config.data.max_len = 50
    # Fraction of training sessions (the last ones in file order) held out for validation.
    config.data.valid_fraction = 0.1
    # Share of the distinct training items that are hot (most frequent).
    config.data.hot_fraction = 0.2
    # 'clicks' counts each training click once; 'prefixes' is the authors' once-per-prefix count.
    config.data.hot_counting = "clicks"
    # Padded lengths of the batch buckets (clipped to max_len), so short sessions stay cheap.
    config.data.buckets = (8, 16, 32, 50)
    # Smoke runs only: training / evaluation examples kept per split (0 keeps all).
    config.data.max_train_examples = 0
    config.data.max_eval_examples = 0

    config.model = ml_collections.ConfigDict()
    # Width d of item embeddings and of the transformer.
    config.model.hidden_dim = 128
    # Transformer blocks.
    config.model.num_layers = 1
    # Attention heads per block.
    config.model.num_heads = 1
    # Feed-forward inner width.
    config.model.inner_dim = 128
    # Dropout on the input, attention probabilities, attention output and FFN output.
    config.model.dropout_rate = 0.5
    # 'standard' (LeCun kernels, LayerNorm gain 1) or 'authors' (everything U(-0.1, 0.1)).
    config.model.init_scheme = "standard"
    # Session readout: 'mean+summary' (the gate also sees a learned summary token placed after the
    # session: +0.03 test HR@20 for the Tmall teacher, docs/findings.md, "Readout") or 'mean' (METHOD.md's, and
    # what runs made before this field had). See rec_kd/models/sasrec.py READOUTS.
    config.model.readout = "mean+summary"
    # Added to the ranking score of each item the session already holds (0: the paper's ranking).
    # The losses and the teacher's soft targets never see it (every gradient is the same); it changes
    # what is recommended: evaluation, and so epoch selection and refit length, and export. docs/findings.md, "Repeat bonus".
    config.model.repeat_bonus = 0.0
    # A learned copy signal: one trained scalar added to the scores of the items the session already
    # holds, in the scores every loss reads (unlike repeat_bonus, which only ranks). Off: the paper's model.
    config.model.copy_bonus = False
    # Students: start every parameter outside the item table from the phase's teacher model (its
    # transformer and readout; the shapes must match), instead of from scratch.
    config.model.init_from_teacher = False

    config.table = ml_collections.ConfigDict()
    # Student item table (rec_kd/compress): 'sttd', 'tt' (plain TT-matrix, t forced to 1), 'dense',
    # or a compressor sized to `budget`: 'lowrank', 'hash', 'qr', 'mixed_dim', 'codes' (options below).
    # Combine a table with an objective ablation by overriding this: `student,ce --config.table.kind=qr`.
    config.table.kind = variant if variant in TABLE_VARIANTS else "sttd"
    # Small catalogues need a smaller rank to compress at all (MovieLens-100k has 1,683 rows).
    suggested_rank = 16 if dataset == "ml-100k" else 60
    main_table = MAIN_TABLES.get(dataset, dict(item_factors=(), dim_factors=(), ranks=(suggested_rank,), t=2))
    # Row factors I_1..I_K (prod >= num_items + 1); empty = suggested from the catalogue size.
    config.table.item_factors = main_table["item_factors"]
    # Width factors J_1..J_K (prod = hidden_dim); empty = suggested.
    config.table.dim_factors = main_table["dim_factors"]
    # TT ranks R_1..R_{K-1}; with empty factors only ranks[0] is used (same rank everywhere).
    config.table.ranks = main_table["ranks"]
    # Semi-tensor-product factor t (divides the ranks and J_K); 1 = plain TT.
    config.table.t = main_table["t"]
    # Cores K when the factors are suggested.
    config.table.num_cores = 2
    # Parameters the kinds below may use; each size left at 0 becomes the largest setting within
    # it. 0 = the size of this catalogue's main STTD table above (191,160 on Tmall), so every
    # compressor is compared at the STTD student's size. results.json records the exact count.
    config.table.budget = 0
    # The same budget in bytes on device (fp32 parameters x 4, integer arrays at their width, the
    # row map if there is one); when set it replaces `budget`. What a phone stores is bytes.
    config.table.budget_bytes = 0
    # 'codes': M fixed integer codes an item into M trained codebooks of K vectors
    # (rec_kd/compress/codes.py). method 'pq' (concatenated sub-vectors) or 'rq' (a sum of full
    # vectors; codes by a beam search of width `beam`); num_codebooks 0 = the most within the
    # budget; codebook_size a power of two (uint8 codes for <= 256). source: 'teacher' (a
    # frequency-weighted k-means of the phase's teacher table), 'svd' (RecJPQ: of a truncated SVD
    # of the training sessions) or 'random'.
    config.table.codes = ml_collections.ConfigDict(
        {"method": "pq", "num_codebooks": 0, "codebook_size": 256, "source": "teacher", "kmeans_iterations": 25, "beam": 8}
    )
    # 'lowrank': E = A B, A (P, rank), B (rank, d).
    config.table.lowrank = ml_collections.ConfigDict({"rank": 0})
    # 'hash': `buckets` shared rows; num_hashes 1 without item_weights is the hashing trick, 2 with
    # learned per-item weights is hash embeddings (rec_kd/compress/hashing.py).
    config.table.hash = ml_collections.ConfigDict({"buckets": 0, "num_hashes": 2, "item_weights": True})
    # 'qr': quotient-remainder tables indexed by i // modulus and i % modulus; combine 'mult',
    # 'add' or 'concat'.
    config.table.qr = ml_collections.ConfigDict({"modulus": 0, "combine": "mult"})
    # 'mixed_dim': hot items (data.hot_fraction) get hot_dim-wide rows, the rest cold_dim-wide
    # (0 = round(hot_dim * cold_ratio), at least 1), each block projected to d. hot_rows is filled
    # from the data when the run starts (the packed hot mask; rec_kd/compress/mixed_dim.py).
    config.table.mixed_dim = ml_collections.ConfigDict({"hot_dim": 0, "cold_dim": 0, "cold_ratio": 0.25, "hot_rows": ""})
    # Which table row holds each item: 'id' (item i is row i, the paper's), 'shuffled' (a fixed
    # random permutation drawn from row_order_seed) or 'clustered' (items close in the teacher's
    # select-phase table share first-core rows; a k-means seeded by row_order_seed, two-core STTD /
    # TT only). Benchmark ids follow first appearance, so with 'id' the popular early items share
    # STTD / TT / QR factor rows (docs/findings.md, "Row order"). Only sttd, tt and qr tables read
    # it (models.ROW_ORDER_KINDS); Tmall shuffles, RetailRocket keeps the id order (MAIN_ROW_ORDER).
    config.table.row_order = "id"
    config.table.row_order_seed = 0
    # The 'clustered' order's item -> row map (row_order.encode_item_rows), filled when the run
    # starts and kept in its config.json, so that a resume and an export need no teacher. Leave empty.
    config.table.item_rows = ""

    config.distill = ml_collections.ConfigDict()
    # lambda: weight of soft-target KD; the rec loss gets 1 - lambda.
    config.distill.kd_weight = 0.8
    # beta: weight of the contrastive (InfoNCE) loss.
    config.distill.cl_weight = 0.2
    # alpha: weight of the predictive loss.
    config.distill.pred_weight = 0.001
    # Soft-target temperature T (the loss carries the T^2 factor).
    config.distill.kd_temperature = 1.0
    # InfoNCE temperature.
    config.distill.cl_temperature = 0.2
    # 'mean' over the batch, or the authors' 'sum' (re-tune the weights if you use it).
    config.distill.reduction = "mean"
    objective_by_variant = {"ce": (0.0, 0.0, 0.0), "kd": (0.8, 0.0, 0.0), "kd_cl": (0.8, 0.2, 0.0)}
    if variant in objective_by_variant:
        (config.distill.kd_weight, config.distill.cl_weight, config.distill.pred_weight) = objective_by_variant[variant]

    config.train = ml_collections.ConfigDict()
    # Global batch size (a multiple of the device count).
    config.train.batch_size = 100
    # Training epochs; the step with the best validation metric is selected.
    config.train.num_epochs = 10
    # Adam learning rate (peak, for schedules).
    config.train.learning_rate = 1e-3
    # 'constant' or 'cosine' (linear warm-up then cosine decay to 0).
    config.train.schedule = "constant"
    # Warm-up steps for the cosine schedule.
    config.train.warmup_steps = 0
    # Decoupled weight decay (AdamW); 0 gives plain Adam.
    config.train.weight_decay = 0.0
    # The recommendation loss: 'full' (softmax over the whole catalogue, the paper's) or 'sampled'
    # (each target against in-batch and sampled negatives, log-Q corrected: rec_kd/train/sampling.py),
    # for catalogues whose (batch x items) logits dominate a step. The sampled student trains the
    # rec and KD losses only (distill.cl_weight = pred_weight = 0, the 'kd' variant).
    config.train.loss = "full"
    sampled = config.train.sampled = ml_collections.ConfigDict()
    sampled.num_negatives = 1000  # drawn with replacement every step, shared by the batch
    sampled.in_batch = True  # the batch's other targets are negatives too
    sampled.proposal = "popularity"  # or 'uniform'; popularity: training-target frequency (+1)
    sampled.log_q_correction = True
    # How a dense item table (the teacher's) is updated: 'dense' (Adam over every row, every step) or
    # 'rows' (with train.loss='sampled': Adam over the rows the step reads, rec_kd/train/row_sparse.py).
    config.train.table_update = "dense"
    # Split a dense item table (the teacher's), and its optimizer state, by rows over the 'data' mesh
    # instead of copying it to every device, so a slice holds a table no single device does. The rows
    # are padded to a multiple of 1,024 (models.SHARDED_TABLE_ROW_MULTIPLE); see docs/scaling.md.
    config.train.shard_item_table = False
    # Evaluation batch size (a multiple of the device count).
    config.train.eval_batch_size = 500
    # Columns scored at a time in evaluation (evaluation.chunked_target_ranks): -1 picks by catalogue size
    # (EVAL_CHUNK_ITEMS columns a chunk past EVAL_FULL_MATRIX_MAX_ITEMS items, else the whole (B, N + 1) matrix);
    # 0 always the whole matrix; N > 0 chunks of N.
    config.train.eval_chunk_items = -1
    # Evaluate valid (and test, for the paper protocol) every this many epochs.
    config.train.eval_every_epochs = 1
    # Metric on valid that selects the step.
    config.train.selection_metric = "hr@20"
    # After selecting the epoch count on valid, train a fresh model on train + valid for that many
    # epochs and report it (valid holds the most recent sessions, which matter under drift).
    config.train.refit_on_valid = False
    # Stop when the selection metric has not improved for this many evaluations (0 = never).
    config.train.early_stop_patience = 3
    # An evaluation improves on the best only when it beats it by more than this (in the selection
    # metric), so a flat valid curve stops and selects early instead of chasing noise. 0 = any gain.
    config.train.early_stop_min_delta = 0.0
    # Save a resumable checkpoint every this many steps (and at every epoch end and on SIGTERM).
    config.train.checkpoint_every_steps = 1000
    # Log training metrics every this many steps.
    config.train.log_every_steps = 100

    if dataset == "ml-100k" and not smoke:
        # The demo's dataset: settings chosen on valid to come close to convergence in 3 epochs a
        # stage (about 9 minutes for both on a 2-core CPU; what was tried: docs/data.md). Smoke runs
        # keep the base settings, whose step counts and learning rates the tests are written for.
        config.model.dropout_rate = 0.2
        config.train.learning_rate = 3e-3 if stage == "student" else 2e-3
        config.train.schedule = "cosine"
        config.train.warmup_steps = 300
        config.train.num_epochs = 3
    if dataset in MAIN_TABLES and not smoke:
        # About one standard error of valid HR@20, sqrt(p (1 - p) / n) at p ~ 0.35: 0.0019 on
        # Tmall's 61,076 valid examples, 0.0024 on RetailRocket's 39,919. Without it the Tmall
        # teacher selected 8 epochs on gains below that (valid 0.3494 at 3, 0.3513 at 8) and its
        # refit over-trained: docs/findings.md, "A minimum gain".
        config.train.early_stop_min_delta = 0.002
        # `--config.table.row_order=id` is the paper's order.
        config.table.row_order = MAIN_ROW_ORDER[dataset]
    if dataset == CUSTOM:
        add_custom_data_fields(config)
    if smoke:
        config.data.max_train_examples = 3000
        config.data.max_eval_examples = 1000
        config.train.num_epochs = 2
        config.train.early_stop_patience = 0
        config.train.checkpoint_every_steps = 10
        config.train.log_every_steps = 5
    return config


def add_custom_data_fields(config: ml_collections.ConfigDict) -> None:
    """The fields of a dataset given by format and path (configs/custom.py), in place."""
    data = config.data
    # Reader of data.path, one of FORMATS: 'srgnn' (a folder holding the train.txt and test.txt
    # pickles), 'user_sequences' ('u i1 i2 ...' or 'u i' lines), 'inter' (a RecBole .inter file),
    # 'events' (a raw click CSV, preprocessed with the data.events rules) or 'synthetic' (generated
    # sessions, data.synthetic below).
    data.format = ""
    # The folder (srgnn) or the file. A relative path is relative to the working directory (for
    # sweeps, which start their runs in the repository: to the repository).
    data.path = ""
    events = data.events = ml_collections.ConfigDict()
    # The raw-events rules, in rec_kd/data/raw_events.py's order of steps; 0 means "no such limit"
    # where noted. Column names of the session (or user) id, item id and timestamp, and the delimiter.
    events.session_column = "session_id"
    events.item_column = "item_id"
    events.time_column = "timestamp"
    events.delimiter = ","
    # Seconds per timestamp unit (0.001 for milliseconds).
    events.time_unit_seconds = 1.0
    # Keep only the first N distinct session keys, in file order (0 = all).
    events.max_session_keys = 0
    # A gap longer than this starts a new session within one key (0 = never split).
    events.session_gap_seconds = 0.0
    # Sessions shorter than this are dropped (before and after dropping rare items).
    events.min_session_length = 2
    # Clicks on items seen fewer times than this are dropped.
    events.min_item_count = 5
    # Sessions longer than this are dropped (0 = no limit).
    events.max_session_length = 0
    # Sessions ending in the last this many seconds of the log are the test split.
    events.test_window_seconds = 86400.0
    # The shortest prefix a session is expanded to (1: every click after the first is a target).
    events.min_prefix_length = 1
    # data.format='synthetic' reads no file: it generates sessions (rec_kd/data/synthetic.py, whose
    # SyntheticSpec documents each field) deterministically from these fields; data.path stays empty.
    synthetic = data.synthetic = ml_collections.ConfigDict()
    synthetic.num_items = 10_000
    synthetic.num_events = 200_000
    synthetic.num_clusters = 100
    synthetic.successors = 4
    synthetic.zipf_exponent = 1.0
    synthetic.repeat_prob = 0.3
    synthetic.mean_length = 5.0
    synthetic.max_session_length = 50
    synthetic.test_fraction = 0.1
    synthetic.seed = 0
    # What `dataset` holds: 'custom:FORMAT:/absolute/path', computed when read, so it follows the
    # overrides of data.format and data.path. The teacher check compares it (teacher and student
    # must read the same file), results.json reports it, and the data is read from it (so a run
    # read back from its config.json finds its file from any working directory).
    absolute_path = data.get_ref("path")._apply_op(lambda path: os.path.abspath(path) if path else "")  # lazy, like `+`
    config.dataset = f"{CUSTOM}:" + data.get_ref("format") + ":" + absolute_path
    # Unused: data.path names the data.
    config.data_dir = ""
    # Students: with empty table.item_factors, the rank is the largest whose table is at least this
    # many times smaller than the dense one (factors suggested from the catalogue size;
    # rec_kd/compress/sttd.py suggest_spec_at_compression). table.ranks is then ignored.
    config.table.target_compression = 30.0
