r"""Writes a synthetic DREAM-format training file and prints what it wrote.

The model behind the data (yeast TF motifs scanned as PWMs on both strands, position
effects, Gcn4 x TATA synergy, Ume6 silencing, logistic link, noise, integer binning) is
described in enformer_small/synthetic.py.

Usage:
  python -m experiments.make_synthetic_data --output /tmp/synthetic.txt --rows 100000 --seed 0
  python -m experiments.make_synthetic_data --output /tmp/synthetic.txt.gz --rows 6739258
"""

import dataclasses

from absl import app
from absl import flags

from enformer_small import synthetic
from experiments import _runtime

_OUTPUT = flags.DEFINE_string('output', None, 'file to write (.gz: gzip).', required=True)
_ROWS = flags.DEFINE_integer('rows', 100_000, 'rows to write.')
_SEED = flags.DEFINE_integer('seed', 0, 'random seed (non-negative).')
_NOISE_SD = flags.DEFINE_float('noise_sd', synthetic.SyntheticConfig.noise_sd,
                               'measurement noise sd on the 0..17 scale.')
_INTEGER_SHARE = flags.DEFINE_float('integer_share', synthetic.SyntheticConfig.integer_share,
                                    'share of rows rounded to whole bins.')
_DECIMALS = flags.DEFINE_integer('decimals', synthetic.SyntheticConfig.decimals,
                                 'decimals of the non-integer expressions.')
_WORKERS = flags.DEFINE_integer('workers', None,
                                'generator threads (default: up to 2); never changes bytes.')


def main(argv):
  del argv
  try:
    config = synthetic.SyntheticConfig(
        num_rows=_ROWS.value, seed=_SEED.value, noise_sd=_NOISE_SD.value,
        integer_share=_INTEGER_SHARE.value, decimals=_DECIMALS.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  report = synthetic.write_synthetic_file(_OUTPUT.value, config, workers=_WORKERS.value)
  for field in dataclasses.fields(report):
    value = getattr(report, field.name)
    print(f'{field.name}: {value:.4f}' if isinstance(value, float)
          else f'{field.name}: {value}')
  print(f'rows_per_second: {report.rows_per_second:,.0f}')


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  _runtime.run(main)
