"""The data layer: one entry point, `load_splits(config.data)`, for every source."""

import numpy as np

from avvp_jax.data.split import Split

SOURCES = ('synthetic', 'llp')


def load_splits(data_config) -> dict[str, Split]:
  """Returns {'train', 'val', 'test'} -> Split (host arrays) for `data_config.source`,
  every feature finite (`check_finite`)."""
  if data_config.source == 'synthetic':
    from avvp_jax.data import synthetic
    splits = synthetic.load(data_config.synthetic)
  elif data_config.source == 'llp':
    from avvp_jax.data import llp
    splits = llp.load(data_config)
  else:
    raise ValueError(f'Unknown data source {data_config.source!r}; choose one of {SOURCES}.')
  for name, split in splits.items():
    check_finite(split, f'the {name} split of {describe(data_config)}')
  return splits


FEATURES = ('audio', 'video_2d', 'video_3d')


def check_finite(split: Split, source: str) -> None:
  """Refuses NaN or inf in any feature of any clip, naming `source`, the feature and the
  clips: a model would turn them into NaN probabilities, which score as no event."""
  for field in FEATURES:
    x = getattr(split, field)
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(-1)
    if bad.any():
      clips = [str(n) for n in split.names[bad][:5]]
      raise ValueError(
          f'{source}: {int(bad.sum())} clips have NaN or inf {field} features, e.g. '
          f'{", ".join(clips)}{", ..." if bad.sum() > 5 else ""}.')


def describe(data_config) -> str:
  """The data source in a few words, for tables and reports: 'synthetic (seed 0)' or
  'llp (/data/llp)'."""
  if data_config.source == 'synthetic':
    return f'synthetic (seed {data_config.synthetic.seed})'
  return f'{data_config.source} ({data_config.dir})'
