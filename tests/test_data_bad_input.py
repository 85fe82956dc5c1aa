"""Bad input: each case ends in a one-line DataError naming the file, and hostile pickles never run."""

import lzma
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from rec_kd.data import DataError, load_dataset, load_inter, load_path, load_srgnn, load_user_sequences

REPO = Path(__file__).resolve().parents[1]
GOOD_TRAIN = ([[1, 2], [1], [3]], [3, 2, 1])
GOOD_TEST = ([[2]], [3])


class RunsCommand:
    """Pickles to `os.system(command)`: loading it with plain pickle would run the command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def srgnn_folder(tmp_path, train_bytes, test_bytes=None):
    folder = tmp_path / "ds"
    folder.mkdir(exist_ok=True)
    (folder / "train.txt").write_bytes(train_bytes)
    (folder / "test.txt").write_bytes(test_bytes or pickle.dumps(GOOD_TEST, protocol=3))
    return folder


def assert_one_line_error(call, path, message):
    with pytest.raises(DataError, match=message) as error:
        call()
    text = str(error.value)
    assert str(path) in text and "\n" not in text
    return text


def test_good_folder_loads(tmp_path):
    folder = srgnn_folder(tmp_path, pickle.dumps(GOOD_TRAIN))
    assert load_srgnn(str(folder)).num_items == 3


def test_missing_files(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    assert_one_line_error(lambda: load_srgnn(str(folder)), folder / "train.txt", "file not found")
    (folder / "train.txt").write_bytes(pickle.dumps(GOOD_TRAIN))
    assert_one_line_error(lambda: load_srgnn(str(folder)), folder / "test.txt", "file not found")
    assert_one_line_error(lambda: load_dataset("tmall", str(tmp_path)), tmp_path / "tmall", "no such dataset folder")


def test_pickle_running_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps((RunsCommand(f"touch {marker}"), [1]), protocol=3)
    folder = srgnn_folder(tmp_path, payload)
    text = assert_one_line_error(lambda: load_srgnn(str(folder)), folder / "train.txt", "refused")
    assert "system" in text  # names the global it refused (posix.system on Linux)
    assert not marker.exists()
    # The same bytes really do run the command under plain pickle (in a child process).
    plain_load = f"import pickle; pickle.load(open({str(folder / 'train.txt')!r}, 'rb'))"
    subprocess.run([sys.executable, "-c", plain_load])
    assert marker.exists()


def test_pickle_calling_eval_is_refused_in_test_file(tmp_path):
    folder = srgnn_folder(tmp_path, pickle.dumps(GOOD_TRAIN), pickle.dumps(CallsEval(), protocol=4))
    assert_one_line_error(lambda: load_srgnn(str(folder)), folder / "test.txt", "builtins.eval")


def test_truncated_and_non_pickle_files(tmp_path):
    data = pickle.dumps(GOOD_TRAIN, protocol=3)
    folder = srgnn_folder(tmp_path, data[: len(data) // 2])
    assert_one_line_error(lambda: load_srgnn(str(folder)), folder / "train.txt", "not a valid pickle")
    folder = srgnn_folder(tmp_path, b"user item\n1 2\n")
    assert_one_line_error(lambda: load_srgnn(str(folder)), folder / "train.txt", "not a valid pickle")
    folder = srgnn_folder(tmp_path, b"")
    assert_one_line_error(lambda: load_srgnn(str(folder)), folder / "train.txt", "not a valid pickle")


def test_truncated_xz(tmp_path):
    folder = tmp_path / "xz"
    folder.mkdir()
    compressed = lzma.compress(pickle.dumps(GOOD_TRAIN))
    (folder / "train.txt.xz").write_bytes(compressed[:-20])
    (folder / "test.txt").write_bytes(pickle.dumps(GOOD_TEST))
    assert_one_line_error(lambda: load_srgnn(str(folder)), folder / "train.txt.xz", "not a valid .xz")


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"seqs": [], "targets": []}, "expected a pair"),
        (([[1]], [2], [3]), "expected a pair"),
        ([[1, 2]], "expected a pair"),
        (("abc", [1]), "expected seqs and targets to be lists"),
        (([[1], [2]], [3]), "2 sequences but 1 targets"),
        (([[1], 5], [3, 4]), "sequence 1 is a value of type int"),
        (([[1], []], [3, 4]), "sequence 1 is empty"),
        (([[1], [2, -4]], [3, 4]), "sequence 1 has item id -4"),
        (([[0, 1]], [3]), "sequence 0 has item id 0"),
        (([[1], [2, 1.5]], [3, 4]), "sequence 1 has a non-integer item id 1.5"),
        (([[1], [2, "7"]], [3, 4]), "non-integer item id '7'"),
        (([[1], [2, True]], [3, 4]), "non-integer item id True"),
        (([[1], [2, 2**70]], [3, 4]), f"item id {2**70}"),
        (([[1], [2]], [3, 0]), "target 1 is item id 0"),
        (([[1], [2]], [-3, 1]), "target 0 is item id -3"),
        (([[1], [2]], [3, -(2**70)]), f"target 1 is item id {-(2**70)}"),
        (([[1], [2]], [3, 4.0]), "target 1 is a non-integer item id 4.0"),
    ],
)
def test_wrong_structure_and_bad_ids(tmp_path, obj, message):
    folder = srgnn_folder(tmp_path, pickle.dumps(obj, protocol=3))
    assert_one_line_error(lambda: load_srgnn(str(folder)), folder / "train.txt", message)


@pytest.mark.parametrize(
    "content, message",
    [
        ("1 2 3\n2\n", "line 2: user 2 has no items"),
        ("1 2 x\n", "line 1: item id 'x' is not an integer"),
        ("1 2 0\n", "line 1: item id 0 must be >= 1"),
        ("1 -2 3\n", "line 1: item id -2 must be >= 1"),
        ("1 2 3.5\n", "item id '3.5' is not an integer"),
    ],
)
def test_bad_user_sequences(tmp_path, content, message):
    path = tmp_path / "seqs.txt"
    path.write_text(content)
    assert_one_line_error(lambda: load_user_sequences(str(path)), path, message)


def test_missing_and_binary_user_sequences(tmp_path):
    missing = tmp_path / "no.txt"
    assert_one_line_error(lambda: load_user_sequences(str(missing)), missing, "file not found")
    path = tmp_path / "binary.txt"
    path.write_bytes(b"\xff\xfe\x00")
    assert_one_line_error(lambda: load_user_sequences(str(path)), path, "not a UTF-8 text file")


HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "malformed header: the file is empty"),
        ("user_id item_id timestamp\n1 2 3\n", "malformed header: field 'user_id item_id timestamp'"),
        ("user_id:token\titem_id:token\trating:float\n1\t2\t3\n", "malformed header: missing timestamp"),
        ("user_id:token\titem:token\ttimestamp:float\n", "missing item_id"),
        (HEADER + "1\t2\t3\n", "line 2: expected 4 tab-separated fields, got 3"),
        (HEADER + "1\t2\t3\t4\n1\tab\t3\t5\n", "line 3: item id 'ab' is not an integer"),
        (HEADER + "1\t0\t3\t4\n", "line 2: item id 0 must be >= 1"),
        (HEADER + "1\t2\t3\tyesterday\n", "line 2: timestamp 'yesterday' is not a number"),
    ],
)
def test_bad_inter(tmp_path, content, message):
    path = tmp_path / "bad.inter"
    path.write_text(content)
    assert_one_line_error(lambda: load_inter(str(path)), path, message)


# A dataset given by format and path (configs/custom.py, inspect --format): the path is checked
# before any reader runs, and a reader's error on a file of another format says which it looks like.
GOOD_INTER = HEADER + "".join(f"{u}\t{i}\t3\t{t}\n" for u in (1, 2) for t, i in enumerate((5, 6, 7, 8, 9)))
GOOD_SEQUENCES = "1 5 6 7 8 9\n2 5 6 7 8 9\n"
GOOD_EVENTS = "session_id,item_id,timestamp\n" + "".join(f"s{k},i{i},{100 * k + t}\n" for k in range(6) for t, i in enumerate("abc"))


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    return path


def test_load_path_reads_each_file_format(tmp_path):
    inter = load_path("inter", str(write(tmp_path, "log.inter", GOOD_INTER)))
    sequences = load_path("user_sequences", str(write(tmp_path, "seqs.txt", GOOD_SEQUENCES)))
    # Two users of 5 items each, leave-one-out: 2 training examples each (prefixes of 1 and 2 items).
    for data in (inter, sequences):
        assert (data.num_items, len(data.train), len(data.valid), len(data.test)) == (9, 4, 2, 2)
    # Six sessions [a b c], 100 s apart; the last day is test unless the window is shorter. With a
    # 250 s window, sessions ending after 502 - 250 = 252 (s3, s4, s5) are test.
    events = load_path("events", str(write(tmp_path, "clicks.csv", GOOD_EVENTS)), {"min_item_count": 1, "test_window_seconds": 250})
    assert (events.num_items, events.num_train_sessions, len(events.test)) == (3, 3, 6)


@pytest.mark.parametrize(
    "data_format, name, content, message",
    [
        ("inter", None, None, "no such file or folder"),
        ("inter", "empty.inter", "", "the file is empty"),
        ("events", "empty.csv", "", "the file is empty"),
        ("user_sequences", "empty.txt", "", "the file is empty"),
        ("srgnn", "log.inter", GOOD_INTER, "is a file, but format 'srgnn' reads a folder holding train.txt and test.txt"),
        ("user_sequences", "log.inter", GOOD_INTER, r"line 1: item id 'item_id:token' is not an integer \(it looks like format 'inter'"),
        ("events", "log.inter", GOOD_INTER, r"missing column .* \(it looks like format 'inter'"),
        ("inter", "clicks.csv", GOOD_EVENTS, r"malformed header: .* \(it looks like format 'events'"),
        ("inter", "seqs.txt", GOOD_SEQUENCES, r"malformed header: .* \(it looks like format 'user_sequences'"),
        ("events", "no_time.csv", "session_id,item_id\ns,a\n", r"missing column timestamp \(the time_column\); the header has"),
        (
            "inter",
            "header_only.inter",
            HEADER,
            r"no train examples after reading it as 'inter' \(leave-one-out needs users with at least 4 items\)",
        ),
        ("user_sequences", "short.txt", "1 5 6 7\n", "no train examples after reading it as 'user_sequences'"),
        ("events", "one_day.csv", GOOD_EVENTS, "no train examples after reading it as 'events'"),
    ],
)
def test_load_path_refuses_bad_input_naming_the_file(tmp_path, data_format, name, content, message):
    path = tmp_path / "missing" if name is None else write(tmp_path, name, content)
    events = {"min_item_count": 1} if data_format == "events" else None  # all six sessions end within a day: no train
    assert_one_line_error(lambda: load_path(data_format, str(path), events), path, message)


def test_load_path_wants_a_folder_for_srgnn_and_a_file_otherwise(tmp_path):
    folder = srgnn_folder(tmp_path, pickle.dumps(GOOD_TRAIN))
    assert load_path("srgnn", str(folder)).num_items == 3
    assert_one_line_error(lambda: load_path("inter", str(folder)), folder, "is a folder, but format 'inter' reads a RecBole .inter file")
    with pytest.raises(DataError, match="unknown data format 'csv'; expected one of srgnn, user_sequences, inter, events"):
        load_path("csv", str(folder))


def run_inspect(*args):
    return subprocess.run(
        [sys.executable, "-m", "rec_kd.data.inspect", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_inspect_reports_bad_input_in_one_line(tmp_path):
    folder = srgnn_folder(tmp_path, pickle.dumps((RunsCommand(f"touch {tmp_path / 'x'}"), [1])))
    result = run_inspect("--format=srgnn", f"--path={folder}")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and str(folder / "train.txt") in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_inspect_by_path_names_the_file_and_the_problem(tmp_path):
    result = run_inspect("--format=events", f"--path={tmp_path / 'none.csv'}")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == f"error: {tmp_path / 'none.csv'}: no such file or folder"


def test_inspect_missing_folder(tmp_path):
    result = run_inspect("--dataset=tmall", f"--data_dir={tmp_path}")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == f"error: {tmp_path / 'tmall'}: no such dataset folder " + (
        "(known datasets: tmall, retailrocket, yoochoose1_64, beauty, ml-100k)"
    )
