"""Typed settings: a config group's schema is a dataclass whose fields are its keys, annotated with the type of
their values; a numeric field also carries its valid range (`number(...)`), so a renamed key takes its check
along. `check_settings` checks the numbers of a composed config against its schema, one ConfigError naming
the first of the wrong type or out of its range; other values are checked by the code that reads them.

    int        an integer (a bool is not a number here)     float  an int or a float, finite
    int | None null allowed                                   float | Literal["auto"]  the word allowed too
    tuple[float, float]   a list, each item checked as `key.0`, `key.1`
"""
import math
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Literal, Mapping

from omegaconf import DictConfig, ListConfig

from lora_one import ConfigError

INTEGER, REAL = "an integer", "a number"


@dataclass(frozen=True)
class Interval:
    """The valid values of a number, said as its messages say them: ≥ 1, > 0, in [0, 1), in (0, 1]."""

    low: float
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value) -> bool:
        above_low = value > self.low if self.open_low else value >= self.low
        below_high = value < self.high if self.open_high else value <= self.high
        return above_low and below_high

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.open_low else '≥'} {self.low:g}"
        return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"


def at_least(low: float) -> Interval:
    return Interval(low)


def above(low: float) -> Interval:
    return Interval(low, open_low=True)


def number(valid: Interval | None = None, hint: str = ""):
    """A numeric field: its valid range (None: any value of its type) and a hint said after the range."""
    return field(metadata={"valid": valid, "hint": hint})


@dataclass(frozen=True)
class NumberType:
    """What a numeric annotation admits: integers or any number, null, and words."""

    kind: str
    nullable: bool
    words: tuple[str, ...]

    @classmethod
    def of(cls, annotation) -> "NumberType | None":
        """None for an annotation without int or float (a string, a bool, a mapping)."""
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        members = typing.get_args(annotation) if union else (annotation,)
        numbers = [member for member in members if member in (int, float)]
        if not numbers:
            return None
        words = tuple(word for member in members if typing.get_origin(member) is Literal
                      for word in typing.get_args(member))
        return cls(INTEGER if numbers == [int] else REAL, type(None) in members, words)

    @property
    def or_words(self) -> str:
        return "".join(f" or {word}" for word in self.words)

    def admits(self, value) -> bool:
        """Of the type (NaN and inf are no settings), or null when nullable, or one of the words."""
        if (value is None and self.nullable) or (isinstance(value, str) and value in self.words):
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return isinstance(value, int) if self.kind == INTEGER else math.isfinite(value)

    def check(self, key: str, value, valid: Interval | None, hint: str) -> None:
        if not self.admits(value):
            raise ConfigError(f"{key} must be {self.kind}{self.or_words} (got {value!r})")
        if valid is not None and isinstance(value, (int, float)) and value not in valid:
            raise ConfigError(f"{key} must be {valid}{self.or_words} (got {value})" + (f": {hint}" if hint else ""))


OptionSchemas = Mapping[type, Mapping[str, type]]  # a group's schema → {option name: the schema of that option}


def option_schema(schema: type, node: DictConfig, options: OptionSchemas) -> type:
    """The schema of the option a group node was composed from, found by its `name` (else the group's own)."""
    return options.get(schema, {}).get(node.get("name"), schema)


def check_settings(schema: type, node: DictConfig, options: OptionSchemas, prefix: str = "") -> None:
    """Check every number of `node` that `schema` declares; a field the node lacks (an option without that key)
    is skipped. Nested dataclasses are checked under their key, as the schema of their option."""
    annotations = typing.get_type_hints(schema)
    for setting in fields(schema):
        if setting.name in node:
            check_value(f"{prefix}{setting.name}", annotations[setting.name], node[setting.name], setting.metadata,
                        options)


def check_value(key: str, annotation, value, metadata, options: OptionSchemas) -> None:
    if is_dataclass(annotation):
        check_settings(option_schema(annotation, value, options), value, options, f"{key}.")
    elif typing.get_origin(annotation) is tuple:
        if not isinstance(value, (list, tuple, ListConfig)):
            raise ConfigError(f"{key} must be a list (got {value!r})")
        for index, item in enumerate(value):
            check_value(f"{key}.{index}", typing.get_args(annotation)[0], item, metadata, options)
    elif (number_type := NumberType.of(annotation)) is not None:
        number_type.check(key, value, metadata.get("valid"), metadata.get("hint", ""))


def number_type_at(schema: type, node: DictConfig, key: str, options: OptionSchemas) -> NumberType | None:
    """The NumberType the schema gives the dotted `key` of `node` (None: not a number, or no such field)."""
    first, _, rest = key.partition(".")
    annotation = typing.get_type_hints(schema).get(first)
    if rest and is_dataclass(annotation) and first in node:
        return number_type_at(option_schema(annotation, node[first], options), node[first], rest, options)
    return None if rest or annotation is None else NumberType.of(annotation)
