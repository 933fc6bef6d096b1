"""The data layer: one entry point, `load_splits(config.data)`, for every source."""

from avvp_jax.data.split import Split

SOURCES = ('synthetic', 'llp')


def load_splits(data_config) -> dict[str, Split]:
  """Returns {'train', 'val', 'test'} -> Split (host arrays) for `data_config.source`."""
  if data_config.source == 'synthetic':
    from avvp_jax.data import synthetic
    return synthetic.load(data_config.synthetic)
  if data_config.source == 'llp':
    from avvp_jax.data import llp
    return llp.load(data_config)
  raise ValueError(f'Unknown data source {data_config.source!r}; choose one of {SOURCES}.')


def describe(data_config) -> str:
  """The data source in a few words, for tables and reports: 'synthetic (seed 0)' or
  'llp (/data/llp)'."""
  if data_config.source == 'synthetic':
    return f'synthetic (seed {data_config.synthetic.seed})'
  return f'{data_config.source} ({data_config.dir})'
