"""What every benchmark shares around the model: choosing the questions, reading completions
produced elsewhere, and writing one auditable jsonl line per prediction."""
import json
import os
import random
from collections import defaultdict
from typing import Sequence

from lora_one import ConfigError


def select(items: list[dict], limit: int | None, seed: int | None = None) -> list[dict]:
    """At most `limit` items: the first ones, or with `seed` a seeded sample kept in file order."""
    if not limit or limit >= len(items):
        return items
    if seed is None:
        return items[:limit]
    chosen = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in chosen]


def read_completions(path: str, items: Sequence[dict]) -> list[list[str]]:
    """Completions from a jsonl file (`task_id` or `idx`, and `completion`; several lines with the same
    id are several samples), aligned with `items`. Every item needs at least one completion."""
    if not os.path.exists(path):
        raise ConfigError(f"predictions file '{path}' does not exist")
    by_id = defaultdict(list)
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            key = row.get("task_id", row.get("idx"))
            if key is None or "completion" not in row:
                raise ConfigError(f"{path}: line {number} needs 'task_id' (or 'idx') and 'completion'")
            by_id[str(key)].append(row["completion"])
    missing = [item["id"] for item in items if item["id"] not in by_id]
    if missing:
        raise ConfigError(f"{path}: no completion for {len(missing)} of {len(items)} questions, e.g. '{missing[0]}'")
    return [by_id[item["id"]] for item in items]


def write_records(path: str, records: list[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_rows(path: str, required: Sequence[str] = ()) -> list[dict]:
    """Rows of a local .jsonl (one object a line) or .json (one list) file, each an object with the
    `required` keys; anything else is one ConfigError naming the file and the line or row."""
    if not os.path.exists(path):
        raise ConfigError(f"data file '{path}' does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise ConfigError(f"data file '{path}' is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if path.endswith(".jsonl"):
        numbered = [(f"line {number}", parse_json(line, f"{path}: line {number}"))
                    for number, line in enumerate(text.split("\n"), 1) if line.strip()]
    else:
        rows = parse_json(text, path)
        if not isinstance(rows, list):
            raise ConfigError(f"data file '{path}' must hold a json list of rows")
        numbered = [(f"row {number}", row) for number, row in enumerate(rows, 1)]
    for where, row in numbered:
        if not isinstance(row, dict):
            raise ConfigError(f"data file '{path}': {where} is not a json object")
        if missing := [key for key in required if key not in row]:
            raise ConfigError(f"data file '{path}': {where} lacks {', '.join(repr(key) for key in missing)}")
    return [row for _, row in numbered]


def parse_json(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
