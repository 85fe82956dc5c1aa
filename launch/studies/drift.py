"""How much does Tmall drift? One epoch of the teacher on the first vs the last N training examples.

  python -m launch.studies.drift --data_dir=../shared/data --workdir=/tmp/drift [--num_examples=60000]

Both runs see the same number of examples and steps; only their place in time differs (SR-GNN
files list sessions in time order). Prints one JSON object with each run's test HR@20 / MRR@20
(evaluated on the first 8,000 valid and test examples). On Tmall the last examples give a far
better model, which is why docs/method.md ("The protocol") discusses the validation holdout.
"""

import dataclasses
import json
import os

from absl import app, flags

from rec_kd import data as data_lib
from rec_kd import defaults
from rec_kd.train import loop

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Folder holding tmall/.")
_DATASET = flags.DEFINE_string("dataset", "tmall", "An SR-GNN dataset (sessions in time order).")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/rec_kd_drift", "Where the two runs go.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 60000, "Training examples in each run.")
_NUM_EVAL = flags.DEFINE_integer("num_eval", 8000, "Valid and test examples evaluated.")


def main(argv):
    del argv
    full = data_lib.load_dataset(_DATASET.value, _DATA_DIR.value)
    n, total = _NUM_EXAMPLES.value, len(full.train)
    report = {"dataset": full.name, "num_examples": n}
    for name, (start, stop) in (("first", (0, n)), ("last", (total - n, total))):
        data = dataclasses.replace(
            full, train=full.train.rows(slice(start, stop)), valid=full.valid.head(_NUM_EVAL.value), test=full.test.head(_NUM_EVAL.value)
        )
        config = defaults.get_config(full.name, "teacher")
        config.train.num_epochs = 1
        result = loop.train_and_evaluate(config, os.path.join(_WORKDIR.value, name), data=data)
        report[name] = {
            "test_hr@20": result["test"]["hr@20"],
            "test_mrr@20": result["test"]["mrr@20"],
            "valid_hr@20": result["valid"]["hr@20"],
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app.run(main)
