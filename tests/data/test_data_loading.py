"""Data never gives a silently wrong run: a label outside `dataset.label_names` is one line naming the
file and line; rows that `model.max_length` drops or truncates are counted per side in the log and in
results.json, and a side left empty is one line; identical rows never sit on both sides of the split;
a GLUE task folder's files get the checks of any data file; trailing blank lines are ignored in TSV as
in JSON Lines; a capped `dataset.eval_size` is a warning with the numbers; a hub dataset missing
offline is one line naming the local setting."""
import json
import logging
import random
import re
from collections import Counter

import pytest

from conftest import (
    QUICK,
    TINY,
    assert_error,
    assert_one_error_line,
    cli_process,
    compose_config,
    run_cli,
    run_experiment,
)
from lora_one import ConfigError
from lora_one.data import load_splits
from lora_one.data.loading import load_raw_rows, to_examples
from lora_one.eval.glue import dev_examples

SHORT = "What is {} + 1?"  # with the alpaca template: 41 tiny-tokenizer tokens, its response 3
LONG_QUESTION = SHORT + " And then?" * 40  # a prompt of 158 tokens: nothing of the response fits in 64
LONG_ANSWER = "Add one. " * 40  # a response of 244 tokens after a 38-token prompt: cut at 64
MAX_LENGTH = ["model.max_length=64"]
GSM8K_STEP = TINY + MAX_LENGTH + ["dataset=gsm8k", "init=default", "model.max_steps=1", "checkpoint.every_n_steps=0",
                                  "dataset.eval_size=10"]


def row(i: int, question: str = SHORT, answer: str = "") -> dict:
    return {"question": question.format(i), "answer": f"{answer}#### {i + 1}"}


def write_jsonl(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def split_numbers(path: str, eval_size: int = 10) -> tuple[list[int], list[int]]:
    """Which row numbers of the file land in train and in held-out (each row's answer ends `#### i+1`)."""
    cfg = compose_config(GSM8K_STEP + [f"dataset.path={path}", f"dataset.eval_size={eval_size}"])
    train, held_out = load_splits(cfg.dataset, cfg.seed)
    return ([int(ex["response"].split("#### ")[1]) - 1 for ex in side] for side in (train, held_out))


def numbers_in(message: str, without: str) -> list[int]:
    """The integers a log line states, in order, once the path `without` (its digits are not counts) is cut out."""
    return [int(n) for n in re.findall(r"\b\d+\b", message.replace(without, ""))]


@pytest.fixture
def no_model(monkeypatch):
    """The run must stop while loading its data: building the model is an error."""
    import run_exp

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(run_exp, "load_model", refuse)


# --- labels -------------------------------------------------------------------------------------------

def sst2_jsonl(tmp_path, bad_label) -> str:
    rows = [{"sentence": f"a fine film {i}", "label": i % 2} for i in range(40)]
    rows[6]["label"] = bad_label
    return write_jsonl(tmp_path / "sst2.jsonl", rows)


@pytest.mark.parametrize("label", [-1, 5, 2, 1.5, True, "yes", "-1", None])
def test_a_label_outside_the_label_names_is_named_with_its_line(tmp_path, no_model, label):
    path = sst2_jsonl(tmp_path, label)
    expected = (f"{path}: line 7: label {label!r} is not a class index of dataset.label_names: "
                "0 (negative), 1 (positive)" if label is not None
                else f"{path}: line 7 has no field 'label' (dataset.columns.response)")
    with pytest.raises(ConfigError) as caught:
        run_experiment(TINY + ["dataset=sst2", f"dataset.path={path}"], tmp_path / "run")
    assert str(caught.value) == expected


def test_labels_as_digits_are_class_indices(tmp_path):
    path = sst2_jsonl(tmp_path, " 1")
    train, held_out = load_splits(compose_config(TINY + ["dataset=sst2", f"dataset.path={path}"]).dataset, 0)
    responses = sorted(ex["response"] for ex in train + held_out)
    assert responses == ["negative"] * 19 + ["positive"] * 21  # rows 0, 2, ..., 38 are label 0, but row 6 is " 1"


def test_cli_names_the_glue_test_splits_minus_one(tmp_path):
    path = sst2_jsonl(tmp_path, -1)
    proc = run_cli(TINY + ["dataset=sst2", f"dataset.path={path}"], tmp_path / "run")
    assert_one_error_line(proc, f"error: {path}: line 7: label -1 is not a class index of dataset.label_names: "
                                "0 (negative), 1 (positive)")


def sst2_folder(tmp_path, lines: list[bytes], name: str = "train.tsv"):
    folder = tmp_path / "SST-2"
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(b"sentence\tlabel\n" + b"".join(lines))
    return folder


def good_tsv_lines(count: int) -> list[bytes]:
    return [b"a fine film %d\t%d\n" % (i, i % 2) for i in range(count)]


def test_a_tsv_label_outside_the_task_is_named_with_its_line(tmp_path):
    lines = good_tsv_lines(30)
    lines[6] = b"a fine film\t2\n"
    folder = sst2_folder(tmp_path, lines)
    with pytest.raises(ConfigError) as caught:
        load_splits(compose_config(TINY + ["dataset=sst2", f"dataset.path={folder}"]).dataset, 0)
    assert str(caught.value) == f"{folder / 'train.tsv'}: line 8: label '2' is not one of ['0', '1']"


# --- rows longer than model.max_length ----------------------------------------------------------------

def test_rows_lost_to_max_length_and_duplicates_are_counted(tmp_path, caplog):
    """100 rows, 10 held out. The seeded shuffle depends on the number of rows alone, so the file is
    written again with the same number of rows, knowing where each lands: held-out rows 0-2 and training
    rows 0-4 get a prompt too long for max_length (dropped), held-out 3-4 and training 5-8 a long answer
    (truncated), training rows 9-11 become copies of held-out rows 5-7 (removed) and training rows
    12-13 copies of training row 20 (kept)."""
    path = tmp_path / "gsm8k.jsonl"
    train, held_out = split_numbers(write_jsonl(path, [row(i) for i in range(100)]))
    rows = [row(i) for i in range(100)]
    for i in held_out[:3] + train[:5]:
        rows[i] = row(i, LONG_QUESTION)
    for i in held_out[3:5] + train[5:9]:
        rows[i] = row(i, answer=LONG_ANSWER)
    for copy, original in zip(train[9:12], held_out[5:8]):
        rows[copy] = rows[original]
    for copy in train[12:14]:
        rows[copy] = rows[train[20]]
    write_jsonl(path, rows)
    with caplog.at_level(logging.INFO, logger="lora_one.data"):
        results = run_experiment(GSM8K_STEP + [f"dataset.path={path}"], tmp_path / "run")
    assert results["data"] == {"source": str(path), "rows": 100, "duplicate_rows": 5,
                               "train_copies_of_held_out_removed": 3,
                               "train": {"rows": 87, "dropped_too_long": 5, "truncated": 4, "used": 82},
                               "held_out": {"rows": 10, "dropped_too_long": 3, "truncated": 2, "used": 7}}
    records = [r for r in caplog.records if r.name.startswith("lora_one.data")]
    # the log says the same counts, in the order results.json has them (train, then held-out)
    assert [(r.levelname, numbers_in(r.getMessage(), without=str(path))) for r in records] == [
        ("INFO", [87, 10, 5, 3]),  # rows per side, rows repeating an earlier one, training copies removed
        ("WARNING", [64, 82, 87, 7, 10, 5, 3, 64, 4, 2])]  # max_length; used, dropped, truncated per side


@pytest.mark.parametrize("side,count", [("training", 90), ("held-out", 10)])
def test_a_side_left_empty_by_max_length_is_one_line(tmp_path, no_model, side, count):
    path = tmp_path / "gsm8k.jsonl"
    train, held_out = split_numbers(write_jsonl(path, [row(i) for i in range(100)]))
    too_long = set(train if side == "training" else held_out)
    write_jsonl(path, [row(i, LONG_QUESTION if i in too_long else SHORT) for i in range(100)])
    with pytest.raises(ConfigError) as caught:
        run_experiment(GSM8K_STEP + [f"dataset.path={path}"], tmp_path / "run")
    assert str(caught.value) == (f"dataset 'gsm8k' from {path}: none of the {count} {side} rows fits "
                                 "model.max_length=64 (each prompt alone fills all of it, leaving no response token): "
                                 "raise model.max_length")


# --- duplicates ---------------------------------------------------------------------------------------

def test_identical_rows_never_sit_on_both_sides(tmp_path):
    """Every row twice: a row held out (once or twice) has no copy left in train; every other row
    trains twice, as the file has it."""
    path = write_jsonl(tmp_path / "twice.jsonl", [row(i) for i in range(100)] * 2)
    train, held_out = split_numbers(path, eval_size=20)
    assert len(held_out) == 20 and len(set(held_out)) < 20  # a pair held out whole: the shuffle put both first
    assert Counter(train) == {i: 2 for i in range(100) if i not in held_out}


def test_a_file_of_one_row_repeated_leaves_nothing_to_train_on(tmp_path, no_model):
    path = write_jsonl(tmp_path / "same.jsonl", [row(1)] * 40)
    with pytest.raises(ConfigError) as caught:
        run_experiment(GSM8K_STEP + [f"dataset.path={path}"], tmp_path / "run")
    assert str(caught.value) == (f"dataset 'gsm8k' from {path} has no training rows: "
                                 "all 36 rows after the 4 held out are copies of held-out rows")


def test_clean_data_is_split_as_before(tmp_path):
    """No duplicates: the held-out rows are the first eval_size of the seeded shuffle, the rest trains."""
    path = write_jsonl(tmp_path / "clean.jsonl", [row(i) for i in range(100)])
    cfg = compose_config(GSM8K_STEP + [f"dataset.path={path}"])
    rows, source = load_raw_rows(cfg.dataset, 7)
    examples = to_examples(rows, cfg.dataset, source)
    random.Random(7).shuffle(examples)
    assert load_splits(cfg.dataset, 7) == (examples[10:], examples[:10])


# --- GLUE files ---------------------------------------------------------------------------------------

def glue_source(folder, how: str):
    """Load the SST-2 file of `folder` as training data (the folder, or its train.tsv), or as the dev set."""
    if how == "dev":
        return dev_examples(compose_config(["dataset=sst2", f"dataset.path={folder}", "eval=glue"]).eval.glue)
    path = folder if how == "folder" else folder / "train.tsv"
    return load_splits(compose_config(TINY + ["dataset=sst2", f"dataset.path={path}"]).dataset, 0)


@pytest.mark.parametrize("how", ["folder", "file", "dev"])
@pytest.mark.parametrize("bad_line,cause", [
    (b"caf\xe9\t1\n", "is not valid UTF-8 (byte 4 of the line: b'\\xe9')"),
    (b"x" * 200_000 + b"\t1\n", "cannot be read as tab-separated fields (field larger than field limit (131072))"),
], ids=["not-utf8", "long-line"])
def test_a_glue_file_is_checked_however_it_is_found(tmp_path, how, bad_line, cause):
    name = "dev.tsv" if how == "dev" else "train.tsv"
    folder = sst2_folder(tmp_path, good_tsv_lines(30) + [bad_line] + good_tsv_lines(2), name)
    with pytest.raises(ConfigError) as caught:
        glue_source(folder, how)
    assert str(caught.value) == f"{folder / name}: line 32 {cause}"


def test_trailing_blank_lines_of_a_tsv_are_ignored_but_not_inner_ones(tmp_path):
    folder = sst2_folder(tmp_path, good_tsv_lines(30) + [b"\r\n", b"\n", b"  \n", b"\t\n"])
    train, held_out = glue_source(folder, "folder")
    assert len(train) + len(held_out) == 30
    folder = sst2_folder(tmp_path, good_tsv_lines(1) + [b"\n"] + good_tsv_lines(29))
    with pytest.raises(ConfigError) as caught:
        glue_source(folder, "folder")
    assert str(caught.value) == f"{folder / 'train.tsv'}: line 3 has 0 tab-separated fields, expected 2"


# --- dataset.eval_size --------------------------------------------------------------------------------

def test_an_eval_size_beyond_a_tenth_of_the_rows_is_a_warning_with_the_numbers(tmp_path, caplog):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", [row(i) for i in range(100)])
    with caplog.at_level(logging.WARNING, logger="lora_one.data"):
        train, held_out = split_numbers(path, eval_size=500)
    assert (len(train), len(held_out)) == (90, 10)
    [warning] = caplog.records
    assert warning.levelname == "WARNING"
    assert path in warning.getMessage() and "dataset.eval_size" in warning.getMessage()
    assert numbers_in(warning.getMessage(), without=path) == [500, 100, 10]  # asked, rows in the file, held out


# --- the hub offline -----------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,message", [
    (["eval=mmlu"], r"^error: hub dataset 'cais/mmlu' \(config all, split test\) is neither cached nor "
                    r"reachable \(Couldn't reach 'cais/mmlu' on the Hub \(OfflineModeIsEnabled\), HF_HUB_OFFLINE=1\): "
                    r"download it once with network, or set eval.mmlu.data_dir to a local copy$"),
    (["dataset=gsm8k"], r"^error: hub dataset 'openai/gsm8k' \(config main, split train\) is neither cached nor "
                        r"reachable \(.*HF_HUB_OFFLINE=1\): download it once with network, or set dataset.path to a "
                        r"local copy$"),
])
def test_cli_names_a_hub_dataset_missing_offline(tmp_path, overrides, message):
    proc = cli_process(QUICK + overrides, tmp_path / "run", HF_HOME=str(tmp_path / "empty_hf_home"))
    assert_error(proc, message)
    assert "held-out loss" not in (tmp_path / "run" / "run_exp.log").read_text()  # before any model ran
