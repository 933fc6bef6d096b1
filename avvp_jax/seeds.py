"""The seeds of a run, and one seed's model out of the stacked models of a checkpoint.

A run of `config.num_seeds` = S trains the models of seeds config.seed, config.seed + 1, ...
side by side, stacked on a leading axis. Seed s of a run computes what a one-seed run with
`config.seed = s` computes. The checkpoints name their seeds (`checkpoints.Checkpoint`);
only a checkpoint written before they did has its seeds taken from the config.
"""

import jax

from avvp_jax import train
from avvp_jax.checkpoints import Checkpoint
from avvp_jax.models import HAN


def seed_list(config) -> list[int]:
  """The seeds of a run's models, in the order of the stacked axis."""
  if config.num_seeds < 1:
    raise ValueError(f'config.num_seeds must be at least 1, not {config.num_seeds}.')
  return [config.seed + s for s in range(config.num_seeds)]


def seed_index(seeds: list[int], seed: int | None, source: str) -> tuple[int, int]:
  """(index, seed) of `seed` (the first if None) among the stacked `seeds` that `source`
  holds; refuses a seed that is not there."""
  seed = seeds[0] if seed is None else seed
  if seed not in seeds:
    raise ValueError(f'{source} holds the models of seeds {seeds}, not of seed {seed}.')
  return seeds.index(seed), seed


def checkpoint_seeds(config, checkpoint: Checkpoint) -> list[int]:
  """The seeds of a checkpoint's stacked axis: as it names them, or (written before
  checkpoints named them) config.seed, config.seed + 1, ... as many as it holds."""
  if checkpoint.seeds is not None:
    return checkpoint.seeds
  return [config.seed + s for s in range(jax.tree.leaves(checkpoint.params)[0].shape[0])]


def one_seed(config, checkpoint: Checkpoint, seed: int | None, source: str,
             stage: str | None = None):
  """(model, params, seed): one seed's model out of a checkpoint's stacked parameters (of
  training `stage`, where known: JoMoLD's stage 1 has no cross-modal attention); the first
  seed if `seed` is None. Refuses a seed that is not there, and parameters that are not
  those of `config.model`, naming `source`."""
  index, seed = seed_index(checkpoint_seeds(config, checkpoint), seed, source)
  model = HAN.from_config(config.model, stage)
  params = jax.tree.map(lambda x: x[index], checkpoint.params)
  shapes = lambda tree: {jax.tree_util.keystr(k): tuple(v.shape)
                         for k, v in jax.tree_util.tree_leaves_with_path(tree)}
  got, want = shapes(params), shapes(
      jax.eval_shape(lambda: train.init_params(model, jax.random.key(0))))
  if got != want:
    differ = sorted(set(got.items()) ^ set(want.items()))[0][0]
    raise ValueError(f'The parameters in {source} are not those of the model of config.model '
                     f'(first difference at {differ}: {got.get(differ)} in the checkpoint, '
                     f'{want.get(differ)} in the model). Give the config the model was '
                     'trained with, and the training stage where its models differ '
                     "(JoMoLD's stage 1 has no cross-modal attention).")
  return model, params, seed
