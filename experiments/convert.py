r"""Converts a checkpoint of the seed's TF/Sonnet Enformer into this project's format.

  python -m experiments.convert \
      --checkpoint ../shared/fixtures/seed_sonnet_85bp/checkpoint/ckpt \
      --output /tmp/seed_85bp.npz
  python -m experiments.convert --checkpoint saved_model_dir --output out.npz \
      --input_length 110

--checkpoint takes a `tf.train.Checkpoint(module=model)` prefix or its directory, or a
`tf.saved_model.save` directory (or its variables/ or variables/variables). Only the
head's size depends on --input_length; a checkpoint of another length is refused with
the lengths it fits. Bad input ends with a one-line `error: ...` and exit status 1.
"""

import dataclasses
import os

from absl import flags

from experiments import _runtime

from enformer_small import checkpoint
from enformer_small import config as config_lib
from enformer_small import convert
from enformer_small import model

_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'TF checkpoint prefix/directory or SavedModel directory.')
_OUTPUT = flags.DEFINE_string('output', None, 'Where to write the converted checkpoint.')
_INPUT_LENGTH = flags.DEFINE_integer(
    'input_length', None,
    'Input length in bp (sizes the flattened head); default: the preset\'s '
    '(85 for seed, 196,608 for original).')
_PRESET = flags.DEFINE_enum('preset', 'seed', ['seed', 'original'],
                            'seed: the DREAM 2022 seed; original: DeepMind\'s Enformer.')


def model_config() -> config_lib.EnformerConfig:
  if _PRESET.value == 'seed':
    return config_lib.seed_config(
        85 if _INPUT_LENGTH.value is None else _INPUT_LENGTH.value)
  config = config_lib.original_config()
  if _INPUT_LENGTH.value is not None:
    config = dataclasses.replace(config, input_length=_INPUT_LENGTH.value)
  return config


class ConvertFlagsError(Exception):
  """Flags that cannot be used together (the message says which)."""


def run() -> None:
  if not _CHECKPOINT.value or not _OUTPUT.value:
    raise ConvertFlagsError('--checkpoint and --output are required')
  config = model_config()
  params, state = convert.convert_checkpoint(_CHECKPOINT.value, config)
  checkpoint.save_checkpoint(
      _OUTPUT.value, params=params, state=state, model_config=config,
      extra={'converted_from': os.path.abspath(_CHECKPOINT.value)})
  num_bn = sum(1 for module in state if module.endswith('/mean_ema'))
  counters = sorted({int(v['counter']) for v in state.values()})
  tokens = convert.output_tokens(config, config.input_length)
  print(f'converted {_CHECKPOINT.value} ({_PRESET.value} preset)')
  print(f'  input length      {config.input_length} bp -> {tokens} tokens')
  print(f'  parameters        {model.count_params(params):,} in {len(params)} modules')
  print(f'  BatchNorm layers  {num_bn} (moving-average updates: '
        f'{", ".join(map(str, counters))})')
  print('  heads             ' + ', '.join(
      f'{name} [{n}]' for name, n in config.heads))
  print(f'wrote {_OUTPUT.value}')


main = _runtime.command(run, (ConvertFlagsError, convert.ConversionError,
                              checkpoint.CheckpointError, OSError))


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  _runtime.run(main)
