"""A run's seeds, and one seed's model out of a checkpoint's stacked models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avvp_jax import seeds, train
from avvp_jax.checkpoints import Checkpoint
from avvp_jax.models import HAN
from configs import ma


def _tiny_config(**extra):
  config = ma.get_config('cr')
  config.update_from_flattened_dict({'model.d_model': 32, 'model.ffn_dim': 32, **extra})
  return config


def _stacked(config, num=2):
  model = HAN.from_config(config.model)
  return jax.tree.map(lambda *x: jnp.stack(x), *(
      train.init_params(model, jax.random.key(k)) for k in range(num)))


def test_seed_list_follows_config_seed_and_refuses_none():
  assert seeds.seed_list(_tiny_config(seed=5, num_seeds=3)) == [5, 6, 7]
  with pytest.raises(ValueError, match='num_seeds must be at least 1, not 0'):
    seeds.seed_list(_tiny_config(num_seeds=0))


def test_one_seed_takes_a_seed_out_of_stacked_parameters_or_says_why_not():
  """A checkpoint that names no seeds (written before they were named): the config's."""
  config = _tiny_config(seed=5)
  stacked = _stacked(config)
  old = Checkpoint(stacked, 3, None)
  _, params, seed = seeds.one_seed(config, old, 6, 'ckpt')
  assert seed == 6
  np.testing.assert_array_equal(params['fc_prob']['kernel'], stacked['fc_prob']['kernel'][1])
  assert seeds.one_seed(config, old, None, 'ckpt')[2] == 5
  with pytest.raises(ValueError, match=r'ckpt holds the models of seeds \[5, 6\], not of seed 0'):
    seeds.one_seed(config, old, 0, 'ckpt')
  with pytest.raises(ValueError, match=r"ckpt are not those of the model of config.model \("
                                       r"first difference at \['fc_a'\]\['bias'\]: \(32,\) in "
                                       r"the checkpoint, \(16,\) in the model"):
    seeds.one_seed(_tiny_config(**{'model.d_model': 16}), old, None, 'ckpt')


def test_the_seeds_a_checkpoint_names_win_over_the_config():
  """E.g. parse.py --checkpoint with a --config whose seed differs from the run's."""
  config = _tiny_config(seed=0)
  stacked = _stacked(config)
  named = Checkpoint(stacked, 3, [10, 3])
  assert seeds.checkpoint_seeds(config, named) == [10, 3]
  _, params, seed = seeds.one_seed(config, named, 3, 'ckpt')
  assert seed == 3
  np.testing.assert_array_equal(params['fc_prob']['kernel'], stacked['fc_prob']['kernel'][1])
  assert seeds.one_seed(config, named, None, 'ckpt')[2] == 10
  with pytest.raises(ValueError, match=r'seeds \[10, 3\], not of seed 1'):
    seeds.one_seed(config, named, 1, 'ckpt')
