"""Orbax checkpoints of a workdir: a training stage's last and best-val epochs, and the
refined labels of stage 2.

Every checkpoint holds the models (or label sets) of all the run's seeds, stacked on a leading
axis, and names those seeds: `seeds` in its meta, in the order of the stacked axis.
"""

import os
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from avvp_jax import placement, workdir as wd


class Checkpoint(NamedTuple):
  """A training stage's saved model: `params` of every seed, stacked (S, ...); the `epoch`
  (for best/, the last epoch at which any seed improved); the `seeds` of the stacked axis,
  or None in a checkpoint written before checkpoints named them."""
  params: Any
  epoch: int
  seeds: list[int] | None


def _options(name: str, **kwargs) -> ocp.CheckpointManagerOptions:
  # A save cut short by a kill leaves a temp folder, which is not a checkpoint: remove it.
  # `name` prefixes the manager's barriers across processes: two managers saving at once
  # (a stage's last and best) would otherwise meet at the same barrier keys, which
  # jax.distributed refuses ("Barrier ... is already ongoing").
  return ocp.CheckpointManagerOptions(
      create=True, cleanup_tmp_directories=True,
      multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name),
      **kwargs)


_EXISTING = ocp.CheckpointManagerOptions(create=False)


def _restore(directory: str, step: int, item: str, with_meta: bool):
  """(item, meta or None) of checkpoint `step` in `directory`, as saved (plain nested
  dicts), replicated over this process's devices."""
  handlers = {item: ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(directory, item_handlers=handlers, options=_EXISTING) as mngr:
    tree = mngr.item_metadata(step)[item]
    args = {item: ocp.args.StandardRestore(placement.restore_target(getattr(tree, 'tree', tree)))}
    if with_meta:
      args['meta'] = ocp.args.JsonRestore()
    restored = mngr.restore(step, args=ocp.args.Composite(**args))
  return restored[item], restored['meta'] if with_meta else None


def restore_checkpoint(path: str) -> Checkpoint:
  """A checkpoint folder of a training stage: `checkpoints/` or `best/` (its latest epoch),
  or one epoch in them (`.../best/6`)."""
  path = os.path.abspath(path)
  directory, step = path, None
  if os.path.basename(path).isdigit():
    directory, step = os.path.dirname(path), int(os.path.basename(path))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'No checkpoint in {path}: no such folder.')
  with ocp.CheckpointManager(directory, options=_EXISTING) as mngr:
    epochs = mngr.all_steps()
    saved = mngr.latest_step() if step is None else step
  items = set(os.listdir(os.path.join(directory, str(saved)))) if saved in epochs else set()
  if not items & {'params', 'state'}:
    held = f' ({directory} holds epochs {sorted(epochs)})' if step is not None else ''
    raise FileNotFoundError(
        f'No checkpoint of a training stage in {path}{held}: give a stage\'s checkpoints/ '
        'or best/ folder of a launch/main.py workdir, or one epoch in them.')
  is_best = 'params' in items
  restored, meta = _restore(directory, saved, 'params' if is_best else 'state', 'meta' in items)
  seeds = None if meta is None or 'seeds' not in meta else [int(s) for s in meta['seeds']]
  return Checkpoint(restored if is_best else restored['params'], saved, seeds)


def restore_params(workdir: str, stage: str, which: str = 'last') -> Checkpoint:
  """A training stage's last epoch or its best validation epoch (`workdir.checkpoint_dir`)."""
  return restore_checkpoint(wd.checkpoint_dir(workdir, stage, which))


def checkpoint_epoch(workdir: str, stage: str, which: str = 'last'):
  """The epoch of a stage's last or best-val checkpoint, or None if it has none."""
  directory = wd.checkpoint_dir(workdir, stage, which)
  if not os.path.isdir(directory):
    return None
  with ocp.CheckpointManager(directory) as mngr:
    return mngr.latest_step()


def _like(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class StageCheckpoints:
  """The two Orbax managers of a training stage, closed on every exit (a NaN included).

  `checkpoints/` keeps the train state and meta of the last epoch (the resume point);
  `best/` the parameters of the best validation epoch, with meta {'seeds'}. Both hold the
  models of all seeds, stacked on a leading axis; meta's `best_val` and `best_epoch` hold
  one entry per seed. Use as a context manager.
  """

  def __init__(self, workdir: str, stage: str):
    paths = wd.stage_paths(workdir, stage)
    self.directory = paths['checkpoints']
    self._last = ocp.CheckpointManager(paths['checkpoints'],
                                       options=_options(f'{stage}_last', max_to_keep=1))
    # Two: a kill between the commits of `save_best` and `save` leaves a best newer than the
    # last epoch, which `restore` deletes; the best before it must still be there.
    self._best = ocp.CheckpointManager(paths['best'],
                                       options=_options(f'{stage}_best', max_to_keep=2))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self) -> None:
    for mngr in (self._last, self._best):
      mngr.wait_until_finished()
      mngr.close()

  def restore(self, like):
    """(state, meta) of the last saved epoch, placed as `like` (a fresh state), or None in a
    new stage.

    A best-val checkpoint newer than that epoch (saved just before a kill) is deleted: the
    epoch is redone and decides again.
    """
    step = self._last.latest_step()
    if step is None:
      self._drop_best_after(0)
      return None
    restored = self._last.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_like(like)), meta=ocp.args.JsonRestore()))
    self._drop_best_after(restored.meta['epoch'])
    best_saved = max(restored.meta['best_epoch'])  # Any seed's new best saves them all.
    if best_saved and best_saved not in self._best.all_steps():
      raise RuntimeError(
          f'{self.directory} (epoch {restored.meta["epoch"]}) names epoch {best_saved} as the '
          f'last best on val, but {self._best.directory} holds epochs {self._best.all_steps()}: '
          'the stage cannot resume its best-val model; delete the stage folder to redo it.')
    return restored.state, restored.meta

  def restore_best(self, like):
    """The best-val parameters saved last, placed as `like`, or None if none was saved."""
    step = self._best.latest_step()
    if step is None:
      return None
    return self._best.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_like(like)))).params

  def _drop_best_after(self, epoch: int) -> None:
    for step in self._best.all_steps():
      if step > epoch:
        self._best.delete(step)

  def save_best(self, epoch: int, params, seeds: list[int]) -> None:
    """Saves the best-val parameters of every seed (each from its own best epoch so far)."""
    self._best.save(epoch, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave({'seeds': list(seeds)})))

  def save(self, epoch: int, state, meta: dict) -> None:
    """Saves asynchronously; `meta` (with the `seeds`) is copied, so the caller may change
    it at once.

    Waits first for a pending `save_best`: Orbax orders no commits across managers, and an
    epoch committed before its best would name a best that a kill could lose.
    """
    self._best.wait_until_finished()
    self._last.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(dict(meta))))


def save_refined(workdir: str, targets: dict[str, np.ndarray], stats: dict) -> None:
  """Saves stage 2's output, one per seed: {drop_a, drop_v (S, N, 25) bool, partners (S, N, K)
  int}, and its statistics (whose `seeds` name the stacked axis)."""
  with ocp.CheckpointManager(wd.refine_dir(workdir), options=_options('refined')) as mngr:
    mngr.save(0, args=ocp.args.Composite(targets=ocp.args.StandardSave(targets),
                                         stats=ocp.args.JsonSave(stats)))
    mngr.wait_until_finished()


def load_refined(workdir: str):
  """{'drop_a', 'drop_v', 'partners', 'stats'} saved by `save_refined`, or None if not there."""
  if not os.path.isdir(wd.refine_dir(workdir)):
    return None
  with ocp.CheckpointManager(wd.refine_dir(workdir)) as mngr:
    if mngr.latest_step() is None:
      return None
    restored = mngr.restore(0, args=ocp.args.Composite(
        targets=ocp.args.StandardRestore(), stats=ocp.args.JsonRestore()))
  return {**{k: np.asarray(v) for k, v in restored.targets.items()}, 'stats': restored.stats}
