"""Local data files checked before parsing, so a bad file is one ConfigError line naming the file and
the 1-based line (JSON Lines: line N is row N) instead of a pyarrow traceback: not UTF-8, empty, not
valid JSON, or a row that is not an object."""
import json
import os

from lora_one import ConfigError

TEXT_EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv")


def check_data_file(path: str) -> None:
    """An empty file, or (text formats) the first line that is not valid UTF-8 or a file of blanks only."""
    if os.path.getsize(path) == 0:
        raise ConfigError(f"{path} is empty (0 bytes)")
    if not path.lower().endswith(TEXT_EXTENSIONS):
        return
    blank = True
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ConfigError(f"{path}: line {number} is not valid UTF-8 (byte {err.start + 1} of the line: "
                                  f"{raw[err.start:err.start + 1]!r})") from None
            blank = blank and not text.strip()
    if blank:
        raise ConfigError(f"{path} is empty (only whitespace)")


def read_jsonl(path: str) -> list[dict]:
    """The objects of a JSON Lines file (checked by `check_data_file` first), one per line: a blank
    line inside the file, invalid JSON or a non-object is named by its line. Trailing blank lines are
    ignored."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().rstrip().split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise ConfigError(f"{path}: line {number} is blank (JSON Lines holds one object per line)")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: line {number} is not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path}: line {number} holds a JSON {type(row).__name__}, not an object")
        rows.append(row)
    return rows


def row_name(source: str, index: int) -> str:
    """How an error names the row at 0-based `index` of `source`: its line in a JSON Lines file, else
    its 1-based row number."""
    return f"line {index + 1}" if source.lower().endswith(".jsonl") else f"row {index + 1}"
