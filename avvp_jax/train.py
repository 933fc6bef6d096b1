"""The math of training: the train state, the step, an epoch, and evaluation of a split.

The data set lives on the device; each epoch draws batches on the device from a seeded
permutation, and runs its steps in a few calls of a `lax.scan`, so that a step needs no host
round trip and no dispatch of its own. Steps are written against a `Mesh` with a `seed` and
a `data` axis: the models of several seeds, stacked on a leading axis and trained in one
vmapped program, are sharded along `seed`, batches along `data` (`placement` lays them out),
which runs unchanged from one device to many and from one process to many. The train state
is a plain pytree (params, optimiser state, step).
Running a stage in a workdir (checkpoints, logs, reports) is `stages.py`'s work.
"""

import functools
import math
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm import tqdm

from avvp_jax import denoise, losses, metrics, placement
from avvp_jax.data import Split
from avvp_jax.data.split import FEATURES
from avvp_jax.data.classes import NUM_SEGMENTS
from avvp_jax.models import HAN

TARGETS = ('y_global', 'y_a', 'y_v')
# Targets of a whole model rather than of a clip: not gathered into batches (JoMoLD's noise
# ratios, (25,) per model).
MODEL_TARGETS = ('noise_a', 'noise_v')
# Whether a labelled event is truly heard / seen in the clip, (N, 25) bool, where the split
# has dense truth: only to score JoMoLD's drops during training.
TRUTH = ('truth_a', 'truth_v')


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def _stacked_leaves(axes, arg):
  """The leaves of `arg` that `axes` (0, None, or a dict of those) marks as stacked."""
  if isinstance(axes, dict):
    return [x for k in axes for x in _stacked_leaves(axes[k], arg[k])]
  return [] if axes is None else jax.tree.leaves(arg)


def _unstack(axes, arg):
  if isinstance(axes, dict):
    return {k: _unstack(axes[k], arg[k]) for k in axes}
  return arg if axes is None else jax.tree.map(lambda x: x[0], arg)


def over_seeds(fn: Callable, in_axes: tuple) -> Callable:
  """`fn` of one model -> `fn` of S models stacked on a leading axis of its arguments and its
  outputs. `in_axes` as `jax.vmap`'s, one entry per argument: 0 (stacked), None (shared), or
  a dict of those for a dict argument.

  S > 1 is a `jax.vmap` whose stacked axis is sharded over the mesh's `seed` axis. S = 1 is
  `fn` itself on the arguments without that axis: a vmap of size 1 sums in another order
  (parameters 3e-4 apart after 6 steps), and one seed must compute what a one-model run does.
  """
  def stacked(*args):
    sizes = {x.shape[0] for ax, arg in zip(in_axes, args) for x in _stacked_leaves(ax, arg)}
    if sizes != {1}:
      return jax.vmap(fn, in_axes=in_axes, spmd_axis_name='seed')(*args)
    out = fn(*(_unstack(ax, arg) for ax, arg in zip(in_axes, args)))
    return jax.tree.map(lambda x: x[None], out)

  return stacked


def steps_per_epoch(num_clips: int, batch_size: int) -> int:
  return -(-num_clips // batch_size)


def make_schedule(train_config, num_clips: int) -> optax.Schedule:
  """The learning rate per step, by `train_config.schedule`:

  'step': lr multiplied by `lr_decay` every `lr_decay_every` epochs (PyTorch's StepLR; HAN,
    MA, JoMoLD).
  'warmup_cosine': VALOR's, set once per epoch e = 1 .. E: e / W x lr while e < W
    (`warmup_epochs`), then from lr down to `lr_min` along a half cosine over epochs W .. E.
  """
  steps = steps_per_epoch(num_clips, train_config.batch_size)
  kind = train_config.get('schedule', 'step')
  if kind == 'step':
    return optax.exponential_decay(
        train_config.lr, transition_steps=train_config.lr_decay_every * steps,
        decay_rate=train_config.lr_decay, staircase=True)
  if kind == 'warmup_cosine':
    lr, lr_min = train_config.lr, train_config.lr_min
    warm, epochs = train_config.warmup_epochs, train_config.epochs

    def schedule(step):
      epoch = step // steps + 1
      cosine = lr_min + 0.5 * (lr - lr_min) * (
          1.0 + jnp.cos((epoch - warm) / max(epochs - warm, 1) * math.pi))
      return jnp.where(epoch < warm, epoch / warm * lr, cosine)

    return schedule
  raise ValueError(f"config.train.schedule is 'step' or 'warmup_cosine', not {kind!r}.")


def make_optimizer(train_config, schedule: optax.Schedule) -> optax.GradientTransformation:
  """Adam (HAN, MA, JoMoLD) or AdamW with `b1`, `weight_decay` (VALOR), by
  `train_config.optimizer`; with `grad_norm` > 0, gradients are first clipped to that global
  norm (VALOR)."""
  name = train_config.get('optimizer', 'adam')
  if name == 'adam':
    tx = optax.adam(schedule)
  elif name == 'adamw':
    tx = optax.adamw(schedule, b1=train_config.b1, weight_decay=train_config.weight_decay)
  else:
    raise ValueError(f"config.train.optimizer is 'adam' or 'adamw', not {name!r}.")
  if train_config.get('grad_norm', 0.0):
    tx = optax.chain(optax.clip_by_global_norm(train_config.grad_norm), tx)
  return tx


def init_params(model: HAN, rng):
  """Fresh parameters (float32) from `rng`."""
  t = NUM_SEGMENTS
  dummy = [jnp.zeros((1, t, model.audio_dim)), jnp.zeros((1, t, model.video_2d_dim)),
           jnp.zeros((1, t, model.video_3d_dim))]
  return model.init(rng, *dummy, train=False)['params']


def create_train_state(model: HAN, tx: optax.GradientTransformation, rng) -> TrainState:
  """Initialises parameters and the optimiser state from `rng`."""
  return train_state(init_params(model, rng), tx)


@functools.partial(jax.jit, static_argnums=(0, 1))
def create_train_states(model: HAN, tx: optax.GradientTransformation, rngs) -> TrainState:
  """The states of M models, stacked on a leading axis, from M keys (M,): each initialised
  as `create_train_state` would (a loop, not a vmap, whose rbg draws would differ). Jitted:
  one compilation, where op-by-op dispatch compiled each of the init's ~120 small programs
  (the same values, bit for bit)."""
  states = [create_train_state(model, tx, rngs[m]) for m in range(rngs.shape[0])]
  return jax.tree.map(lambda *x: jnp.stack(x), *states)


def train_state(params, tx: optax.GradientTransformation) -> TrainState:
  """The state at step 0 for the given parameters: a fresh optimiser state."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def device_arrays(split: Split, targets: dict[str, np.ndarray], mesh: Mesh,
                  seeds: bool = False, truth: bool = False) -> dict:
  """The split's model inputs and training targets on the mesh.

  Returns {'audio': (N', T, 128), 'video_2d': (N', T, 2048), 'video_3d': (N', T, 512),
  sharded along `data` (`placement.put_clips`: N' >= N, no copy where the split is already
  on the mesh), and the targets, e.g. 'y_global' | 'y_a' | 'y_v': (N, 25), replicated. With
  `seeds`, the targets are those of S models, (S, N, ...), sharded over the `seed` axis.
  """
  inputs = {k: getattr(split, k) for k in FEATURES}
  if truth:  # TRUTH: (N, 25), whether each class is heard / seen anywhere in the clip.
    inputs.update(truth_a=split.gt_a.any(-1), truth_v=split.gt_v.any(-1))
  inputs = placement.put_clips(inputs, mesh)
  return {**inputs, **jax.device_put(targets, placement.params_sharding(mesh, seeds))}


def loss_fn(params, model: HAN, loss_config, batch: dict, rng) -> tuple[jax.Array, dict]:
  """`losses.total_loss` of the model on a batch of B clips (inputs and targets), train mode.

  With `loss_config.denoise` (JoMoLD's stage 3), the targets are first denoised: the same
  model, in train mode but without cross-modal attention and without gradient, rates the
  batch, and `denoise.batch_drops` zeroes the flagged labels at the noise ratios times
  `batch['warmup']`. Its counts of drops (and, with truth, of right drops and of labels
  truly absent) join the terms.
  """
  apply = lambda key, **kw: model.apply({'params': params}, *(batch[k] for k in FEATURES),
                                        train=True, rngs={'dropout': key}, **kw)
  if not loss_config.get('denoise', False):
    return losses.total_loss(apply(rng), batch, loss_config)
  rate_rng, rng = jax.random.split(rng)
  rated = jax.lax.stop_gradient(apply(rate_rng, cross_modal=False))
  y_a, y_v = batch['y_a'], batch['y_v']
  drop_a, drop_v = denoise.batch_drops(
      losses.bce_elements(rated['a_prob'], y_a, loss_config.clip),
      losses.bce_elements(rated['v_prob'], y_v, loss_config.clip), y_a, y_v,
      batch['noise_a'] * batch['warmup'], batch['noise_v'] * batch['warmup'])
  targets = {**batch, 'y_a': jnp.where(drop_a, 0.0, y_a), 'y_v': jnp.where(drop_v, 0.0, y_v)}
  total, terms = losses.total_loss(apply(rng), targets, loss_config)
  for m, drop, y in (('audio', drop_a, y_a), ('visual', drop_v, y_v)):
    terms[f'drops/{m}'] = drop.sum().astype(jnp.float32)
    if f'truth_{m[0]}' in batch:
      absent = (y > 0.5) & ~batch[f'truth_{m[0]}']
      terms[f'drops/{m}_right'] = (drop & absent).sum().astype(jnp.float32)
      terms[f'drops/{m}_absent'] = absent.sum().astype(jnp.float32)
  return total, terms


@functools.lru_cache
def make_training(model: HAN, train_config: ml_collections.FrozenConfigDict,
                  loss_config: ml_collections.FrozenConfigDict, num_clips: int, mesh: Mesh,
                  seeds: bool = False, data_keys: tuple[str, ...] = FEATURES + TARGETS):
  """Returns (schedule, tx, train_steps) with jitted
  `train_steps(state, data, idx, rng, first, num_steps) -> (state, terms)`.

  `data` is the device-resident split (see `device_arrays`); `idx` (S, B) holds the clips of
  S consecutive steps of an epoch, `first` the epoch step of its first row. The S steps run
  in one call as a `lax.scan`: one dispatch per S steps, and no host work between them. Epoch
  step s draws its dropout from `fold_in(rng, s)`; rows with s >= `num_steps` pad the
  epoch's last call to S steps (every call has one shape) and leave the state alone. Each
  step gathers its batch on the device and shards it along 'data'. `terms` holds the loss
  terms of each row, (S,), zero for padding. Cached, so that stages with the same setup
  share one compilation.

  With `seeds`, it trains M independent models in one program, vmapped (`over_seeds`) over a
  leading axis of M on the state, `idx` (M, S, B), `rng` (M,) and the targets of `data`
  (each (M, N, ...) or (M, 25)); the inputs and truth are shared; `data_keys` names the
  arrays of `data`. `terms` are then (M, S).
  """
  schedule = make_schedule(train_config, num_clips)
  tx = make_optimizer(train_config, schedule)
  batch_sharding = placement.batched(mesh)
  warmup = jnp.asarray(denoise.warmup_factors(
      train_config.epochs, steps_per_epoch(num_clips, train_config.batch_size),
      loss_config.warmup_epochs) if loss_config.get('denoise', False) else np.ones(1))

  def gather(data: dict, idx: jax.Array, step) -> dict:
    per_clip = {k: v for k, v in data.items() if k not in MODEL_TARGETS}
    batch = jax.lax.with_sharding_constraint(jax.tree.map(lambda x: x[idx], per_clip),
                                             batch_sharding)
    return {**batch, **{k: data[k] for k in MODEL_TARGETS if k in data},
            'warmup': warmup[jnp.minimum(step, len(warmup) - 1)]}

  def train_step(state: TrainState, data: dict, idx: jax.Array, rng) -> tuple[TrainState, dict]:
    batch = gather(data, idx, state.step)
    grads, terms = jax.grad(loss_fn, has_aux=True)(state.params, model, loss_config, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), terms

  def train_steps(state: TrainState, data: dict, idx: jax.Array, rng, first,
                  num_steps) -> tuple[TrainState, dict]:
    no_terms = jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), jax.eval_shape(
        lambda p: loss_fn(p, model, loss_config, gather(data, idx[0], state.step), rng)[1],
        state.params))

    def body(state, row):
      step, batch_idx = row
      return jax.lax.cond(
          step < num_steps,
          lambda s: train_step(s, data, batch_idx, jax.random.fold_in(rng, step)),
          lambda s: (s, no_terms), state)

    return jax.lax.scan(body, state, (first + jnp.arange(idx.shape[0]), idx))

  if not seeds:
    return schedule, tx, jax.jit(train_steps, donate_argnums=0)
  data_axes = {k: None if k in FEATURES + TRUTH else 0 for k in data_keys}
  return schedule, tx, jax.jit(over_seeds(train_steps, (0, data_axes, 0, 0, None, None)),
                               donate_argnums=0)


def epoch_batches(rng, num_clips: int, batch_size: int) -> jax.Array:
  """Clip indices of every batch of one epoch, (steps, B), from a seeded permutation.

  As many steps as PyTorch's DataLoader takes (ceil(N / B)); where B does not divide N, the
  last batch is filled up with the first clips of the permutation, so that every step has one
  shape and compiles once. (LLP's 10,000 training clips are exactly 625 batches of 16.)
  """
  steps = steps_per_epoch(num_clips, batch_size)
  perm = jax.random.permutation(rng, num_clips)
  return jnp.resize(perm, (steps, batch_size))


def train_epoch(state: TrainState, train_steps: Callable, data: dict, rng, *, batch_size: int,
                steps_per_call: int, lr_fn: Callable, desc: str) -> tuple[TrainState, dict]:
  """One epoch in calls of `train_steps` (see `make_training`) of at most `steps_per_call`
  steps each, all calls of one size.

  `rng` is one key, or M keys (M,) for the M models of a `seeds` training, each with its own
  permutation and dropout keys, as M one-model epochs would draw them. Returns the new state
  and the per-step loss terms as host arrays (steps,), or (M, steps).
  """
  if steps_per_call < 1:
    raise ValueError(f'train.steps_per_call must be at least 1, not {steps_per_call}.')
  num_clips = data[TARGETS[0]].shape[-2]  # (The inputs may be padded: `device_arrays`.)

  def draw(key):
    perm_rng, dropout_rng = jax.random.split(key)
    return epoch_batches(perm_rng, num_clips, batch_size), dropout_rng

  if rng.ndim:  # Key by key: vmapped rbg keys would draw other permutations.
    batches, dropout_rng = (jnp.stack(x) for x in zip(*(draw(key) for key in rng)))
  else:
    batches, dropout_rng = draw(rng)
  steps = batches.shape[-2]
  calls = -(-steps // steps_per_call)
  per_call = -(-steps // calls)  # E.g. 32 steps at most 25 per call: 2 calls of 16.
  pad = [(0, 0)] * (batches.ndim - 2) + [(0, calls * per_call - steps), (0, 0)]
  batches = jnp.pad(batches, pad)  # Padding rows: skipped.
  first_step = int(placement.host(state.step).ravel()[0])
  history, start = [], time.perf_counter()
  with tqdm(total=steps, desc=desc, leave=False, dynamic_ncols=True, disable=None) as bar:

    def report(call: int) -> None:
      """Shows how far call `call` got; waits for that call only."""
      real = min(per_call, steps - call * per_call)  # Its rows that are steps, not padding.
      done = call * per_call + real
      bar.update(real)
      loss = np.mean(placement.host(history[call]['total'])[..., real - 1])
      bar.set_postfix(loss=f'{float(loss):.4f}',
                      lr=f'{lr_fn(first_step + done - 1):.1e}',
                      clips_per_s=f'{done * batch_size / (time.perf_counter() - start):.0f}')

    for call in range(calls):
      first = call * per_call
      state, terms = train_steps(state, data, batches[..., first:first + per_call, :],
                                 dropout_rng, first, steps)
      history.append(terms)
      if call:  # The previous call's loss: fetching it leaves this call queued behind it.
        report(call - 1)
    report(calls - 1)
  return state, {k: np.concatenate([placement.host(h[k]) for h in history], -1)[..., :steps]
                 for k in history[0]}


@functools.partial(jax.jit, static_argnums=1)
def _gather_batch(data: dict, mesh: Mesh, idx) -> list[jax.Array]:
  """The inputs of the clips `idx` (B,) of the device-resident `data`, sharded along `data`:
  a program of its own, so that the forward pass compiles once per batch size, not once per
  split size."""
  return jax.lax.with_sharding_constraint([data[k][idx] for k in FEATURES],
                                          placement.batched(mesh))


def _outputs(model: HAN, params, audio, video_2d, video_3d) -> dict:
  out = model.apply({'params': params}, audio, video_2d, video_3d, train=False)
  return {k: out[k] for k in ('global_prob', 'a_prob', 'v_prob', 'frame_prob')}


_forward = jax.jit(_outputs, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _forward_seeds(model: HAN, params, audio, video_2d, video_3d) -> dict:
  return over_seeds(functools.partial(_outputs, model), (0, None, None, None))(
      params, audio, video_2d, video_3d)


def predict(model: HAN, params, split: Split, batch_size: int,
            seeds: bool = False) -> dict[str, np.ndarray]:
  """Eval-mode outputs for a whole split, in fixed-size batches gathered on the device (the
  last one wraps around to the first clips).

  Returns host arrays: global_prob, a_prob, v_prob (N, 25); frame_prob (N, T, 2, 25). With
  `seeds`, `params` are S models stacked on a leading axis, and each output gains it: (S, N, 25)
  ... (S, N, T, 2, 25).
  """
  num_seeds = jax.tree.leaves(params)[0].shape[0] if seeds else 1
  mesh = placement.make_mesh(num_seeds)
  n = len(split)
  # A split smaller than a batch (the val split, every epoch) is not padded up to one.
  batch_size = placement.shardable(min(batch_size, n), mesh)
  params = jax.device_put(params, placement.params_sharding(mesh, seeds))
  data = device_arrays(split, {}, mesh)
  forward = _forward_seeds if seeds else _forward
  outs = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size) % n  # One shape for every batch.
    outs.append(forward(model, params, *_gather_batch(data, mesh, idx)))
  axis = 1 if seeds else 0
  return {k: np.concatenate([placement.host(o[k]) for o in outs], axis).take(np.arange(n), axis)
          for k in outs[0]}


def segment_predictions(out: dict, clip_filter: str = 'modality'):
  """`metrics.segment_predictions` of model outputs, each modality's segments filtered by its
  own clip-level probability (`clip_filter` 'modality': a_prob, v_prob; docs/spec.md 5, MA and
  JoMoLD) or both by global_prob ('global': VALOR's evaluation). Returns (pred_a, pred_v)."""
  if clip_filter == 'modality':
    return metrics.segment_predictions(out['frame_prob'], out['a_prob'], out['v_prob'])
  if clip_filter == 'global':
    return metrics.segment_predictions(out['frame_prob'], out['global_prob'],
                                       out['global_prob'])
  raise ValueError(f"config.eval.clip_filter is 'modality' or 'global', not {clip_filter!r}.")


def segment_outputs(model: HAN, params, split: Split, batch_size: int,
                    clip_filter: str = 'modality'
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """One model's segment predictions and probabilities, by modality: ({'audio', 'visual':
  bool (N, 25, 10)}, {'audio', 'visual': (N, 25, 10)})."""
  out = predict(model, params, split, batch_size)
  pred = segment_predictions(out, clip_filter)
  prob = np.moveaxis(out['frame_prob'], 1, -1)  # (N, 2, 25, 10)
  return dict(zip(('audio', 'visual'), pred)), {'audio': prob[:, 0], 'visual': prob[:, 1]}


def eval_protocol(config) -> ml_collections.ConfigDict:
  """`config.eval`, MA's protocol where a config (or an older workdir's) has none: the
  modality filter, the last epoch, best-val checkpoints by segment-level Type@AV, strictly."""
  defaults = {'clip_filter': 'modality', 'model': 'last', 'val_metric': 'segment/type',
              'val_ties': 'first'}
  return ml_collections.ConfigDict({**defaults, **dict(config.get('eval', {}))})


def _scores(out: dict, split: Split, clip_filter: str) -> dict:
  pred_a, pred_v = segment_predictions(out, clip_filter)
  return metrics.evaluate_with_classes(pred_a, pred_v, split.gt_a, split.gt_v)


def evaluate_split(model: HAN, params, split: Split, batch_size: int, seeds: bool = False,
                   clip_filter: str = 'modality'):
  """The ten numbers of docs/spec.md section 5 and per-class segment F on a split with truth:
  {'results', 'per_class_audio', 'per_class_visual'}; with `seeds` (stacked `params`), a list
  of those, one per model. `clip_filter`: see `segment_predictions`."""
  out = predict(model, params, split, batch_size, seeds)
  if not seeds:
    return _scores(out, split, clip_filter)
  return [_scores({k: v[m] for k, v in out.items()}, split, clip_filter)
          for m in range(len(out['a_prob']))]


def targets_from_labels(labels: np.ndarray, loss_config, drop_a=None, drop_v=None,
                        audio_drop_clears_global: bool = True) -> dict[str, np.ndarray]:
  """Training targets (N, 25) each: the weak labels, or the refined ones given drop masks."""
  y_global, y_a, y_v = losses.mil_targets(
      labels, drop_a, drop_v, visual_label_smoothing=loss_config.visual_label_smoothing,
      audio_drop_clears_global=audio_drop_clears_global)
  return {'y_global': np.asarray(y_global, np.float32), 'y_a': np.asarray(y_a, np.float32),
          'y_v': np.asarray(y_v, np.float32)}


# Key implementation of every seeded stream (init, shuffling, dropout keys); changing it
# changes every seeded result (benchmarks/RESULTS.md, "Design measurements", says why rbg).
RNG_IMPL = 'rbg'


def stage_rng(seed: int, stage_index: int):
  """The key of a training stage of one seed; `stage_index` is the stage's place among the
  training stages (0: base, 1: final)."""
  return jax.random.fold_in(jax.random.key(seed, impl=RNG_IMPL), stage_index)

