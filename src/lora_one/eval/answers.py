"""Answer extraction from free-form completions: the final number of a math solution, the answer
word of a commonsense question, the letter of a multiple-choice answer."""
import math
import re

# A number as written in solutions: optional minus and dollar sign, thousands commas, decimals.
# The minus must not follow a word character, so "3-4" reads as 3 and 4, not 3 and -4.
NUMBER = re.compile(r"(?<![\w.])(-?)\$?\s?(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")
# Where a solution states its result; the statement runs to the end of its line or sentence.
ANSWER_MARKERS = (re.compile(r"####"), re.compile(r"answer is", re.IGNORECASE))
STATEMENT_END = re.compile(r"\n|\.(?!\d)")

# Each commonsense task's answer word (LLM-Adapters format); the first one in the completion counts.
CHOICE_PATTERNS = {
    "boolq": r"true|false",
    "piqa": r"solution[12]",
    "social_i_qa": r"answer[1-3]",
    "ARC-Challenge": r"answer[1-5]",
    "ARC-Easy": r"answer[1-5]",
    "openbookqa": r"answer[1-4]",
    "hellaswag": r"ending[1-4]",
    "winogrande": r"option[12]",
}
LETTER = re.compile(r"\b([ABCD])\b")


def parse_number(text: str) -> float | None:
    """The first number in `text` ("$1,250.50" → 1250.5, "-3 apples" → -3), or None."""
    match = NUMBER.search(text)
    if match is None:
        return None
    value = float(match.group(2).replace(",", ""))
    return -value if match.group(1) else value


def last_number(text: str) -> float | None:
    numbers = list(NUMBER.finditer(text))
    return parse_number(numbers[-1].group(0)) if numbers else None


def extract_final_number(text: str) -> float | None:
    """The solution's final answer: the last number of the first complete answer statement after a
    "####", else after an "answer is" ("The answer is 2 * 1.5 = 3." → 3), else the last number anywhere.
    A statement is complete when its line or sentence ends; one running to the end of the text may have
    been cut off by max_new_tokens ("#### 18\n#### 18\n#### 1" → 18), so it counts only when no marker
    has a complete one ("#### 18" → 18)."""
    for marker in ANSWER_MARKERS:
        statements = [statement_after(text, m.end()) for m in marker.finditer(text)]
        complete = [value for statement, ended in statements if ended and (value := last_number(statement)) is not None]
        if complete:
            return complete[0]
        if statements and (value := last_number(statements[-1][0])) is not None:
            return value
    return last_number(text)


def statement_after(text: str, start: int) -> tuple[str, bool]:
    """The statement that starts at `start` (to the end of its line or sentence), and whether it ended
    before the text did."""
    parts = STATEMENT_END.split(text[start:].lstrip(" :$\n"), maxsplit=1)
    return parts[0], len(parts) == 2


def numbers_equal(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def format_number(value: float | None) -> str | None:
    """18.0 → "18", 2.5 → "2.5" (for readable prediction files)."""
    if value is None:
        return None
    return str(int(value)) if value.is_integer() else repr(value)


def extract_choice(text: str, task: str) -> str | None:
    """The first answer word of `task`'s format in the completion (lower-cased), or None."""
    match = re.search(CHOICE_PATTERNS[task], text.lower())
    return match.group(0) if match else None


def extract_letter(text: str) -> str | None:
    """The first standalone A/B/C/D in a multiple-choice answer, or None."""
    match = LETTER.search(text.strip())
    return match.group(1) if match else None
