"""Settings declared once: a dataclass field carries its default, help and choices.

A configuration dataclass (`recipe.Recipe`, `train_config.TrainConfig`, ...) declares each
setting with `setting(...)`; the entry points generate their command-line flags from
those fields (`experiments/_flags.py`), so a flag's name, type, default, choices and
help are written in one place. Fields declared with plain `dataclasses.field` or a bare
default are not settings (no flag).
"""

import dataclasses
import typing
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

HELP = 'help'
CHOICES = 'choices'


def setting(default: Any, help: str, *, choices: Optional[Sequence[str]] = None) -> Any:
  """A dataclass field that is a user-facing setting (one flag of the same name).

  Args:
    default: the field's default (tuples for lists).
    help: one or two sentences for `--help`.
    choices: the allowed values of a string setting.
  """
  metadata = {HELP: help}
  if choices is not None:
    metadata[CHOICES] = tuple(choices)
  return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Setting:
  """What a flag needs to know of one field.

  kind: 'str', 'int', 'float', 'bool', 'ints' (a tuple of ints) or 'strs' (a tuple of
  strings).
  """
  name: str
  kind: str
  default: Any
  help: str
  choices: Optional[Tuple[str, ...]] = None


_KINDS = {str: 'str', int: 'int', float: 'float', bool: 'bool'}


def _kind(annotation: Any, name: str) -> str:
  if typing.get_origin(annotation) is typing.Union:  # Optional[X]
    annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
  if typing.get_origin(annotation) is tuple:
    inner = typing.get_args(annotation)[0]
    return {int: 'ints', str: 'strs'}[inner]
  if annotation in _KINDS:
    return _KINDS[annotation]
  raise TypeError(f'setting {name!r}: no flag kind for {annotation!r}')


def settings_of(cls: type) -> Iterator[Setting]:
  """The settings of a dataclass, in field order (its bases' first)."""
  hints = typing.get_type_hints(cls)
  for field in dataclasses.fields(cls):
    if HELP in field.metadata:
      yield Setting(name=field.name, kind=_kind(hints[field.name], field.name),
                    default=field.default, help=field.metadata[HELP],
                    choices=field.metadata.get(CHOICES))


def check_choices(config: Any) -> None:
  """Raises ValueError for a string setting outside its choices."""
  for item in settings_of(type(config)):
    value = getattr(config, item.name)
    if item.choices is not None and value not in item.choices:
      raise ValueError(f'{item.name} must be one of {", ".join(item.choices)}; got '
                       f'{value!r}')


def values_of(config: Any) -> Dict[str, Any]:
  """{name: value} of a configuration's settings."""
  return {item.name: getattr(config, item.name) for item in settings_of(type(config))}
