"""Command-line flags generated from the settings of configuration dataclasses.

Each field declared with `settings.setting` becomes one absl flag of the same name,
type, default, choices and help (`settings.settings_of`); `parse` builds the dataclass
back from the parsed flags. Lists are comma-separated (`--shifts=-1,0,1`); an empty
value gives an empty tuple.
"""

from typing import Any, Dict, Iterable, Type

from absl import flags

from enformer_small import settings


def define(cls: Type, flag_values: flags.FlagValues = flags.FLAGS,
           skip: Iterable[str] = ()) -> None:
  """Defines one flag per setting of the dataclass `cls` (except those in `skip`)."""
  skip = set(skip)
  for item in settings.settings_of(cls):
    if item.name in skip or item.name in flag_values:
      continue
    kwargs = dict(flag_values=flag_values)
    if item.choices is not None:
      flags.DEFINE_enum(item.name, item.default, list(item.choices), item.help, **kwargs)
    elif item.kind in ('ints', 'strs'):
      default = None if item.default is None else [str(v) for v in item.default]
      flags.DEFINE_list(item.name, default, item.help, **kwargs)
    else:
      define_one = {'str': flags.DEFINE_string, 'int': flags.DEFINE_integer,
                    'float': flags.DEFINE_float, 'bool': flags.DEFINE_bool}[item.kind]
      define_one(item.name, item.default, item.help, **kwargs)


def values(cls: Type, flag_values: flags.FlagValues = flags.FLAGS) -> Dict[str, Any]:
  """{name: value} of the settings of `cls` as parsed (lists as tuples).

  Raises:
    ValueError: a list of ints with an item that is not one, naming the flag.
  """
  out = {}
  for item in settings.settings_of(cls):
    if item.name not in flag_values:
      continue
    value = flag_values[item.name].value
    if item.kind in ('ints', 'strs') and value is not None:
      value = tuple(value)
      if item.kind == 'ints':
        try:
          value = tuple(int(v) for v in value)
        except ValueError:
          raise ValueError(f'--{item.name} must be integers, got '
                           f'{",".join(map(str, value))}') from None
    out[item.name] = value
  return out


def parse(cls: Type, flag_values: flags.FlagValues = flags.FLAGS) -> Any:
  """An instance of `cls` from the parsed flags of its settings."""
  return cls(**values(cls, flag_values))
