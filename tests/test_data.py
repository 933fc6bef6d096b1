"""The data layer's entry point: every source's splits come back with finite features."""

import dataclasses

import numpy as np
import pytest

from avvp_jax.data import load_splits, synthetic
from configs import ma


def _data_config():
  config = ma.get_config('cr').data
  config.synthetic.update({'num_train': 8, 'num_val': 8, 'num_test': 8})
  return config


@pytest.mark.parametrize('split, field, value', [('test', 'video_3d', np.nan),
                                                 ('val', 'audio', np.inf),
                                                 ('train', 'video_2d', -np.inf)])
def test_nan_or_inf_features_of_any_split_name_the_split_feature_and_clip(
    monkeypatch, split, field, value):
  real = synthetic.load

  def broken(config):
    splits = real(config)
    x = getattr(splits[split], field).copy()
    x[3, 7, 1] = value
    splits[split] = dataclasses.replace(splits[split], **{field: x})
    return splits

  config = _data_config()
  clip = str(real(config.synthetic)[split].names[3])
  monkeypatch.setattr(synthetic, 'load', broken)
  with pytest.raises(ValueError, match=rf'the {split} split of synthetic \(seed 0\): 1 clips have '
                                       rf'NaN or inf {field} features, e.g. {clip}\.'):
    load_splits(config)


def test_finite_splits_load():
  splits = load_splits(_data_config())
  assert {k: len(v) for k, v in splits.items()} == {'train': 8, 'val': 8, 'test': 8}
  assert str(splits['test'].names[0]) == 'synte000000_0_10'  # LLP's <11-char id>_<s>_<e>.
