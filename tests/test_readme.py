"""README.md: its results table is launch/report.py's, from docs/results/, and its links resolve."""

import json
import re
from pathlib import Path

import pytest

from launch import report
from rec_kd.experiments import result_copies
from rec_kd.experiments import results as results_lib

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"


def readme_block(text: str) -> list[str]:
    return text.split(report.README_BEGIN, 1)[1].split(report.README_END, 1)[0].strip("\n").splitlines()


def test_the_readme_table_is_the_one_docs_results_makes():
    expected = report.readme_table(result_copies.read_kept(str(RESULTS)))
    assert readme_block((REPO / "README.md").read_text()) == expected, (
        "README.md's results table differs from docs/results/: rerun `python -m launch.report --runs=RUNS --out=docs --readme=README.md`"
    )


def fake_run(run: str, variant: str, seed: int, hr: float, mrr: float, item_table: int, protocol: str) -> dict:
    return {
        "_run": run,
        "dataset": "tmall",
        "variant": variant,
        "table_kind": "sttd" if variant != "codes" else "codes",
        "seed": seed,
        "embedding_compression": None if variant == "teacher" else 4000 / item_table,
        "protocol": protocol,
        "bytes": {"item_table": item_table, "dense_item_table": 4000},
        "test": {"hr@20": hr, "mrr@20": mrr},
    }


def test_a_row_per_refit_recipe_with_mean_and_sample_std_over_seeds():
    refit = "refit on train+valid for the epochs selected on valid"
    runs = [
        fake_run("full_s0", "full", 0, 0.30, 0.18, 200, refit),
        fake_run("full_s1", "full", 1, 0.32, 0.20, 200, refit),
        fake_run("teacher_s0", "teacher", 0, 0.35, 0.17, 4000, refit),
        fake_run("codes_s0", "codes", 0, 0.34, 0.19, 500, refit),
        fake_run("select_s0", "kd", 0, 0.9, 0.9, 200, "selected on valid"),  # not refit: no row
    ]
    runs.append({**fake_run("other_s0", "full", 0, 0.5, 0.5, 200, refit), "dataset": "beauty"})  # not a README dataset
    assert report.readme_table(runs)[2:] == [
        # Teacher first, then by table bytes, largest first; std over seeds 0.30, 0.32: sqrt(0.0002) = 0.0141.
        "| tmall | teacher | 4 kB | 1.0x | 1 | 0.3500 | 0.1700 |",
        "| tmall | codes | 0 kB | 8.0x | 1 | 0.3400 | 0.1900 |",
        "| tmall | full | 0 kB | 20.0x | 2 | 0.3100 ± 0.0141 | 0.1900 ± 0.0141 |",
    ]


def test_runs_recorded_before_bytes_get_them_from_their_config():
    # Tmall's main student of the earlier grid: 191,160 fp32 table parameters, shuffled rows (an int32 map of
    # the 40,727 items and the padding row): 764,640 + 162,912 = 927,552 bytes; dense 40,728 x 128 x 4.
    result = json.loads((RESULTS / "tmall_main_s0.json").read_text())
    assert "item_table" not in result["bytes"]
    assert results_lib.recorded_table_bytes(result) == {"item_table": 927552, "dense_item_table": 20852736}


def test_a_readme_without_the_markers_is_an_error():
    with pytest.raises(report.ReportError, match="no results table markers"):
        report.with_readme_table("# no table\n", ["| a |"])
    text = f"head\n{report.README_BEGIN}\nold\n{report.README_END}\ntail\n"
    assert report.with_readme_table(text, ["| new |"]) == f"head\n{report.README_BEGIN}\n| new |\n{report.README_END}\ntail\n"


def test_every_local_link_in_the_readme_exists():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", (REPO / "README.md").read_text())
    local = [link for link in links if not link.startswith("http")]
    assert local and [link for link in local if not (REPO / link).exists()] == []
