"""experiments.train's flags, generated from the settings of the dataclasses
(`experiments/_flags.py`), read every flagfile and command as the hand-written flags
before them did (tests/data/flagfiles_expected.json, written by that code): the same
TrainConfig and run options. Every setting's flag has help; enum choices come from the
dataclass."""

import dataclasses
import json
import os
import pathlib

from absl import flags
import pytest

from enformer_small import distributed
from enformer_small import settings
from enformer_small import trainer
from enformer_small.train_config import TrainConfig
from experiments import train as train_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
EXPECTED = json.loads((REPO_ROOT / 'tests' / 'data' / 'flagfiles_expected.json')
                      .read_text())
RUN_OPTIONS = ('resume', 'overwrite', 'save_every_minutes', 'tensorboard_every_steps',
               'log_every_steps')
DISTRIBUTED = ('coordinator_address', 'num_processes', 'process_id', 'local_device_ids')


def parsed(argv):
  """Fresh FlagValues with experiments.train's flags, `argv` parsed from the
  repository root (flagfiles are relative paths)."""
  values = flags.FlagValues()
  train_lib.define_flags(values)
  cwd = os.getcwd()
  os.chdir(REPO_ROOT)
  try:
    values(['train', *argv])
  finally:
    os.chdir(cwd)
  return values


@pytest.mark.parametrize('case', sorted(EXPECTED))
def test_argv_gives_the_train_config_and_options_it_gave_before(case):
  expected = EXPECTED[case]
  values = parsed(expected['argv'])
  assert train_lib.config_from_flags(values).to_json_dict() == expected['train_config']
  options = dataclasses.asdict(train_lib.options_from_flags(values))
  job = train_lib.distributed_config_from_flags(values)
  got = {name: options[name] for name in RUN_OPTIONS}
  got['progress'] = values.progress
  got.update({name: getattr(job, name) for name in DISTRIBUTED})
  # The hand-written flag kept --local_device_ids as a list of strings.
  if got['local_device_ids'] is not None:
    got['local_device_ids'] = [str(i) for i in got['local_device_ids']]
  assert got == expected['options']
  assert set(expected['options']) == set(RUN_OPTIONS + DISTRIBUTED + ('progress',))


def test_the_defaults_are_the_dataclasses_defaults():
  values = parsed([])
  assert train_lib.config_from_flags(values) == TrainConfig()
  assert train_lib.options_from_flags(values) == trainer.RunOptions()
  assert train_lib.distributed_config_from_flags(values) == distributed.DistributedConfig()


SETTINGS = [(cls, item) for cls in (TrainConfig, trainer.RunOptions,
                                    distributed.DistributedConfig)
            for item in settings.settings_of(cls)]


def test_every_setting_is_one_flag_with_its_help_and_every_flag_a_setting():
  values = flags.FlagValues()
  train_lib.define_flags(values)
  names = [item.name for _, item in SETTINGS]
  assert len(names) == len(set(names))
  for cls, item in SETTINGS:
    assert item.name in values, (cls.__name__, item.name)
    assert item.help.strip(), (cls.__name__, item.name)
    # absl puts an enum's choices first: `<a|b|c>: help`.
    assert values[item.name].help.endswith(item.help), item.name
  assert set(values) == set(names) | {'progress'}
  assert values['progress'].help.strip()


CHOICES = [(cls, item) for cls, item in SETTINGS if item.choices is not None]


def test_enums_are_the_string_settings_with_choices():
  assert {item.name for _, item in CHOICES} >= {'shift_mode', 'compute_dtype',
                                                 'optimizer', 'schedule', 'loss'}


@pytest.mark.parametrize('cls, item', CHOICES, ids=[item.name for _, item in CHOICES])
def test_enum_choices_come_from_the_dataclass(cls, item):
  values = flags.FlagValues()
  train_lib.define_flags(values)
  assert values[item.name].parser.enum_values == list(item.choices)
  assert values[item.name].default == item.default
  for choice in item.choices:
    values(['train', f'--{item.name}={choice}'])
    assert values[item.name].value == choice
  with pytest.raises(flags.IllegalFlagValueError):
    values(['train', f'--{item.name}=bad'])
