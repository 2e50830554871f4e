"""Answer extraction on hand-written tricky completions, one case per rule."""
import pytest

from lora_one.eval.answers import (
    CHOICE_PATTERNS,
    extract_choice,
    extract_final_number,
    extract_letter,
    format_number,
    numbers_equal,
)


@pytest.mark.parametrize("text,expected", [
    ("She makes 9 * 2 = $18 every day.\n#### 18", 18),                # the training format
    ("#### 1,234", 1234),                                             # thousands comma
    ("#### $1,250.50", 1250.5),                                       # dollar sign and cents
    ("#### -7", -7),                                                  # negative
    ("#### 0.25", 0.25),
    ("The answer is 42.", 42),                                        # sentence-final period is not a decimal
    ("The answer is: 18 dollars per day.", 18),                       # trailing units
    ("The answer is 2 * 1.5 = 3.\n\nSo she", 3),                      # last number of the answer statement
    ("The answer is $5. Then she buys 7 more apples.", 5),            # a later sentence does not count
    ("3 + 4 = 7 apples, 7 - 2 = 5 left", 5),                          # no marker: the last number
    ("First 10 then #### 12\nSome rambling with 99", 12),             # the marker wins over later numbers
    ("#### 18\n#### 18\n#### 1", 18),                                 # repeated, cut mid-number: the first complete
    ("The answer is 5.\nThe answer is 7.\nThe answer is 1", 5),       # the first complete statement
    ("It is 3-4 degrees warmer", 4),                                  # a range is not a negative number
    ("The temperature fell to -3 degrees", -3),
    ("It costs .5 dollars", 0.5),
    ("The answer is twelve, so 12", 12),                              # marker without a number: fall back
])
def test_final_number(text, expected):
    assert extract_final_number(text) == pytest.approx(expected)


def test_no_number_and_comparisons():
    assert extract_final_number("I do not know.") is None
    assert numbers_equal(18.0, 18) and numbers_equal(0.1 + 0.2, 0.3) and not numbers_equal(18, 18.5)
    assert not numbers_equal(None, 3)
    assert format_number(18.0) == "18" and format_number(2.5) == "2.5" and format_number(None) is None


@pytest.mark.parametrize("task,text,expected", [
    ("boolq", "the correct answer is True", "true"),
    ("boolq", "False. It is not.", "false"),
    ("piqa", "the correct answer is solution2", "solution2"),
    ("social_i_qa", "The correct answer is Answer3", "answer3"),
    ("ARC-Challenge", "the correct answer is answer5", "answer5"),
    ("ARC-Easy", "answer1 is right", "answer1"),
    ("openbookqa", "the correct answer is answer4 because", "answer4"),
    ("hellaswag", "the correct answer is ending2", "ending2"),
    ("winogrande", "the correct answer is option1", "option1"),
    ("openbookqa", "the correct answer is answer9", None),           # outside the task's choices
    ("piqa", "the correct answer is answer1", None),                 # another task's format
    ("winogrande", "the correct answer is option2, not option1", "option2"),  # the first one counts
])
def test_commonsense_choice(task, text, expected):
    assert extract_choice(text, task) == expected


def test_every_task_has_a_pattern():
    assert set(CHOICE_PATTERNS) == {"boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Challenge",
                                    "ARC-Easy", "openbookqa"}


@pytest.mark.parametrize("text,expected", [("B", "B"), (" C. Paris", "C"), ("The answer is D", "D"),
                                           ("A", "A"), ("none of them", None), ("Bob", None)])
def test_letter(text, expected):
    assert extract_letter(text) == expected
