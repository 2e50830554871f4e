"""Bad data files stop with one line naming the file and line and the cause; trailing blank lines and CRLF
line ends are fine."""
import pytest

from conftest import TINY, assert_one_error_line, compose_config, run_cli
from lora_one import ConfigError
from lora_one.data import load_splits

GOOD_LINE = b'{"question": "1+1?", "answer": "#### 2"}\n'


def gsm8k_file(tmp_path, content: bytes, name: str = "data.jsonl") -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def load_gsm8k(path: str):
    cfg = compose_config(TINY + ["dataset=gsm8k", f"dataset.path={path}"])
    return load_splits(cfg.dataset, cfg.seed)


def test_cli_names_the_file_and_line_of_non_utf8_bytes(tmp_path):
    # line 3 holds "café" in Latin-1: byte 0xe9 is the 18th byte of that line
    path = gsm8k_file(tmp_path, GOOD_LINE * 2 + b'{"question": "caf\xe9?", "answer": "#### 1"}\n')
    proc = run_cli(TINY + ["dataset=gsm8k", f"dataset.path={path}"], tmp_path / "run")
    assert_one_error_line(proc, f"error: {path}: line 3 is not valid UTF-8 (byte 18 of the line: b'\\xe9')")


@pytest.mark.parametrize("content,name,message", [
    (b"", "data.jsonl", r"is empty \(0 bytes\)"),
    (b"\n  \n\t\n", "data.jsonl", r"is empty \(only whitespace\)"),
    (b"", "data.parquet", r"is empty \(0 bytes\)"),
    (b"question,answer\n1+1?,#### 2\nd\xc3\xa9j\xe0,#### 3\n", "data.csv", r": line 3 is not valid UTF-8"),
    (GOOD_LINE * 3 + b'{"question": {"text": "1+1?"}, "answer": "#### 2"}\n', "data.jsonl",
     r": line 4 field 'question' holds a dict where text is expected \(dataset.columns.instruction\)"),
    (GOOD_LINE + b'{"question": "1+1?", "answer": ["#### 2"]}\n' + GOOD_LINE, "data.jsonl",
     r": line 2 field 'answer' holds a list where text is expected \(dataset.columns.response\)"),
    (b'[{"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?", "answer": {"n": 4}}]', "data.json",
     r"data.json: row 2 field 'answer' holds a dict"),
    (GOOD_LINE * 5 + b'{"question": "2+2?"}\n', "data.jsonl", r": line 6 has no field 'answer'"),
    (GOOD_LINE + b'{"question": "2+2?", "answer": }\n', "data.jsonl",
     r": line 2 is not valid JSON \(Expecting value at column 32\)"),
    (GOOD_LINE + b"\n" + GOOD_LINE, "data.jsonl", r": line 2 is blank"),
    (GOOD_LINE + b'["1+1?", "#### 2"]\n', "data.jsonl", r": line 2 holds a JSON list, not an object"),
])
def test_bad_data_file_is_named_with_its_line(tmp_path, content, name, message):
    path = gsm8k_file(tmp_path, content, name)
    with pytest.raises(ConfigError, match=message) as caught:
        load_gsm8k(path)
    assert str(caught.value).startswith(path) and "\n" not in str(caught.value)


def test_trailing_blank_lines_and_crlf_are_fine(tmp_path):
    rows = b"".join(b'{"question": "%d+1?", "answer": "#### %d"}\r\n' % (i, i + 1) for i in range(20))
    train, held_out = load_gsm8k(gsm8k_file(tmp_path, rows + b"\r\n\n"))
    assert len(train) + len(held_out) == 20
    assert sorted(ex["response"] for ex in train + held_out) == sorted(f"#### {i + 1}" for i in range(20))
