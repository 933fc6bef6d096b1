"""configs/ma.py: variants and schedules as one config argument."""

import pytest

from configs import ma


def test_default_is_ma_on_the_builtin_regime():
  config = ma.get_config()
  assert config.name == 'ma:cr'
  assert config.loss.contrastive and config.refine.enabled
  assert (config.train.epochs, config.train.lr_decay_every) == (8, 3)
  assert config.data.synthetic.num_train == 2000


@pytest.mark.parametrize('arg, name, contrastive, refine, epochs, step', [
    ('baseline', 'ma:baseline', False, False, 8, 3),
    ('paper', 'ma:cr,paper', True, True, 40, 10),
    ('r,reference', 'ma:r,reference', False, True, 12, 10),
    ('reference,c', 'ma:c,reference', True, False, 12, 10),
])
def test_variant_and_schedule(arg, name, contrastive, refine, epochs, step):
  config = ma.get_config(arg)
  assert config.name == name
  assert (config.loss.contrastive, config.refine.enabled) == (contrastive, refine)
  assert (config.train.epochs, config.train.lr_decay_every) == (epochs, step)


@pytest.mark.parametrize('arg', ['rc', 'cr,r', 'paper,reference', 'cr,fast'])
def test_bad_argument_names_the_token(arg):
  with pytest.raises(ValueError, match='at most one variant'):
    ma.get_config(arg)
