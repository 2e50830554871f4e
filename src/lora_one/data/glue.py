"""The GLUE TSV files as the classic `download_glue_data.py` lays them out, read into rows named like
the hub's `nyu-mll/glue` columns (so one `dataset.columns` mapping serves both sources).

Each task's file has its own quirks: CoLA has no header (source, label, original mark, sentence);
MRPC's header starts with a UTF-8 byte-order mark and names its columns `Quality`, `#1 String`, ...;
QNLI and MNLI write their labels as words. Fields are tab-separated with no quoting: a `"` is part of
the text (MRPC and QNLI sentences start with one), so the files are read with quoting disabled.
Every file gets the checks of any local data file first (`check_data_file`: empty, not UTF-8), whether
it is named directly or found in a task folder."""
import csv
import os
from dataclasses import dataclass

from lora_one import ConfigError
from lora_one.data.files import check_data_file


@dataclass(frozen=True)
class TsvLayout:
    fields: dict[str, str]  # hub column name → the file's column name
    columns: tuple[str, ...] | None = None  # names of a headerless file's columns; None: the header names them
    labels: tuple[str, ...] = ("0", "1")  # how the file writes label 0, 1, ... (QNLI, MNLI: as words)


LAYOUTS = {
    "sst2": TsvLayout({"sentence": "sentence", "label": "label"}),
    "cola": TsvLayout({"sentence": "sentence", "label": "label"}, columns=("source", "label", "mark", "sentence")),
    "mrpc": TsvLayout({"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"}),
    "qnli": TsvLayout({"question": "question", "sentence": "sentence", "label": "label"},
                      labels=("entailment", "not_entailment")),
    "mnli": TsvLayout({"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
                      labels=("entailment", "neutral", "contradiction")),
}


def glue_file(path: str, default_name: str) -> str:
    """`path` itself if it is a file, else `<path>/<default_name>` (a task folder: train.tsv, dev.tsv)."""
    path = os.path.expanduser(str(path))
    return os.path.join(path, default_name) if os.path.isdir(path) else path


def read_glue_tsv(task: str, path: str) -> list[dict]:
    """Rows of one GLUE TSV file of `task` as {hub column: value}, the label as its integer index."""
    if task not in LAYOUTS:
        raise ConfigError(f"'{path}' is a GLUE TSV, but dataset '{task}' is not a GLUE task; "
                          f"use one of {sorted(LAYOUTS)}")
    if not os.path.isfile(path):
        raise ConfigError(f"GLUE file '{path}' does not exist")
    check_data_file(path)
    layout = LAYOUTS[task]
    lines = read_tsv(path)
    header, first_line = (lines[0], 2) if layout.columns is None else (list(layout.columns), 1)
    data = lines[first_line - 1:]
    missing = [name for name in layout.fields.values() if name not in header]
    if missing:
        raise ConfigError(f"{path}: line 1 has no column '{missing[0]}' "
                          f"({task} needs {sorted(layout.fields.values())})")
    position = {hub: header.index(name) for hub, name in layout.fields.items()}
    rows = []
    for number, fields in enumerate(data, first_line):
        if len(fields) != len(header):
            raise ConfigError(f"{path}: line {number} has {len(fields)} tab-separated fields, expected {len(header)}")
        row = {hub: fields[i] for hub, i in position.items()}
        if row["label"] not in layout.labels:  # a 2 in a 2-class task is no class at all
            raise ConfigError(f"{path}: line {number}: label '{row['label']}' is not one of {list(layout.labels)}")
        row["label"] = layout.labels.index(row["label"])
        rows.append(row)
    return rows


def read_tsv(path: str) -> list[list[str]]:
    """The tab-separated fields of each line. A line the csv module cannot read (a field over its size
    limit) is named; trailing blank lines are ignored, as in JSON Lines."""
    with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig drops MRPC's byte-order mark
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            lines = list(reader)
        except csv.Error as err:
            raise ConfigError(f"{path}: line {reader.line_num} cannot be read as tab-separated fields "
                              f"({err})") from None
    while lines and not "".join(lines[-1]).strip():
        lines.pop()
    return lines
