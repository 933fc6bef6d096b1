"""Training and evaluation of one stage: a HAN model on (possibly refined) targets.

The data set lives on the device; each epoch draws batches on the device from a seeded
permutation, and runs its steps in a few calls of a `lax.scan`, so that a step needs no host
round trip and no dispatch of its own. Steps are written against a `Mesh` with a
`data` axis: batches are sharded along it and parameters replicated, which runs unchanged from
one device to many. The train state is a plain pytree (params, optimiser state, step).
"""

import functools
import json
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from avvp_jax import losses, metrics
from avvp_jax.data import Split
from avvp_jax.models import HAN

INPUTS = ('audio', 'video_2d', 'video_3d')
TARGETS = ('y_global', 'y_a', 'y_v')


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def make_mesh() -> Mesh:
  """A 1-D mesh over all devices with the batch ('data') axis."""
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def steps_per_epoch(num_clips: int, batch_size: int) -> int:
  return -(-num_clips // batch_size)


def make_schedule(train_config, num_clips: int) -> optax.Schedule:
  """The lr multiplied by `lr_decay` every `lr_decay_every` epochs (PyTorch's StepLR)."""
  return optax.exponential_decay(
      train_config.lr,
      transition_steps=train_config.lr_decay_every * steps_per_epoch(
          num_clips, train_config.batch_size),
      decay_rate=train_config.lr_decay, staircase=True)


def create_train_state(model: HAN, tx: optax.GradientTransformation, rng) -> TrainState:
  """Initialises parameters (float32) and the optimiser state from `rng`."""
  t = 10
  dummy = [jnp.zeros((1, t, model.audio_dim)), jnp.zeros((1, t, model.video_2d_dim)),
           jnp.zeros((1, t, model.video_3d_dim))]
  return train_state(model.init(rng, *dummy, train=False)['params'], tx)


def train_state(params, tx: optax.GradientTransformation) -> TrainState:
  """The state at step 0 for the given parameters: a fresh optimiser state."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def device_arrays(split: Split, targets: dict[str, np.ndarray], mesh: Mesh) -> dict:
  """The split's model inputs and training targets, replicated on the mesh.

  Returns {'audio': (N, T, 128), 'video_2d': (N, T, 2048), 'video_3d': (N, T, 512),
  'y_global' | 'y_a' | 'y_v': (N, 25)}.
  """
  host = {k: getattr(split, k) for k in INPUTS}
  host.update(targets)
  return jax.device_put(host, NamedSharding(mesh, P()))


def loss_fn(params, model: HAN, loss_config, batch: dict, rng) -> tuple[jax.Array, dict]:
  """Total loss and its terms on a batch (B clips)."""
  out = model.apply({'params': params}, *(batch[k] for k in INPUTS), train=True,
                    rngs={'dropout': rng})
  total, terms = losses.mil_loss(out, batch['y_global'], batch['y_a'], batch['y_v'],
                                 loss_config.clip)
  if loss_config.contrastive:
    terms['contrastive'] = losses.contrastive_loss(
        out['h_a'], out['v'], loss_config.tau, loss_config.contrastive_label_smoothing)
    total = total + loss_config.contrastive_weight * terms['contrastive']
  terms['total'] = total
  return total, terms


@functools.lru_cache
def make_training(model: HAN, train_config: ml_collections.FrozenConfigDict,
                  loss_config: ml_collections.FrozenConfigDict, num_clips: int, mesh: Mesh):
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
  """
  schedule = make_schedule(train_config, num_clips)
  tx = optax.adam(schedule)
  batch_sharding = NamedSharding(mesh, P('data'))

  def train_step(state: TrainState, data: dict, idx: jax.Array, rng) -> tuple[TrainState, dict]:
    batch = jax.lax.with_sharding_constraint(
        jax.tree.map(lambda x: x[idx], data), batch_sharding)
    grads, terms = jax.grad(loss_fn, has_aux=True)(state.params, model, loss_config, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), terms

  def train_steps(state: TrainState, data: dict, idx: jax.Array, rng, first,
                  num_steps) -> tuple[TrainState, dict]:
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(idx.shape[1:] + x.shape[1:], x.dtype),
                         data)
    no_terms = jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), jax.eval_shape(
        lambda p, b: loss_fn(p, model, loss_config, b, rng)[1], state.params, batch))

    def body(state, row):
      step, batch_idx = row
      return jax.lax.cond(
          step < num_steps,
          lambda s: train_step(s, data, batch_idx, jax.random.fold_in(rng, step)),
          lambda s: (s, no_terms), state)

    return jax.lax.scan(body, state, (first + jnp.arange(idx.shape[0]), idx))

  return schedule, tx, jax.jit(train_steps, donate_argnums=0)


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

  Returns the new state and the per-step loss terms as host arrays (steps,).
  """
  if steps_per_call < 1:
    raise ValueError(f'train.steps_per_call must be at least 1, not {steps_per_call}.')
  perm_rng, dropout_rng = jax.random.split(rng)
  batches = epoch_batches(perm_rng, data['audio'].shape[0], batch_size)
  steps = batches.shape[0]
  calls = -(-steps // steps_per_call)
  per_call = -(-steps // calls)  # E.g. 32 steps at most 25 per call: 2 calls of 16.
  batches = jnp.pad(batches, ((0, calls * per_call - steps), (0, 0)))  # Padding rows: skipped.
  first_step = int(state.step)
  history, start = [], time.perf_counter()
  with tqdm(total=steps, desc=desc, leave=False, dynamic_ncols=True, disable=None) as bar:

    def report(call: int) -> None:
      """Shows how far call `call` got; waits for that call only."""
      real = min(per_call, steps - call * per_call)  # Its rows that are steps, not padding.
      done = call * per_call + real
      bar.update(real)
      bar.set_postfix(loss=f'{float(history[call]["total"][real - 1]):.4f}',
                      lr=f'{lr_fn(first_step + done - 1):.1e}',
                      clips_per_s=f'{done * batch_size / (time.perf_counter() - start):.0f}')

    for call in range(calls):
      first = call * per_call
      state, terms = train_steps(state, data, batches[first:first + per_call], dropout_rng,
                                 first, steps)
      history.append(terms)
      if call:  # The previous call's loss: fetching it leaves this call queued behind it.
        report(call - 1)
    report(calls - 1)
  return state, {k: np.concatenate([np.asarray(h[k]) for h in history])[:steps]
                 for k in history[0]}


@functools.partial(jax.jit, static_argnums=0)
def _forward(model: HAN, params, audio, video_2d, video_3d) -> dict:
  out = model.apply({'params': params}, audio, video_2d, video_3d, train=False)
  return {k: out[k] for k in ('global_prob', 'a_prob', 'v_prob', 'frame_prob')}


def predict(model: HAN, params, split: Split, batch_size: int) -> dict[str, np.ndarray]:
  """Eval-mode outputs for a whole split, in fixed-size (padded) batches.

  Returns host arrays: global_prob, a_prob, v_prob (N, 25); frame_prob (N, T, 2, 25).
  """
  mesh = make_mesh()
  batch_size = -(-batch_size // mesh.size) * mesh.size  # Shardable along 'data'.
  batch_sharding = NamedSharding(mesh, P('data'))
  params = jax.device_put(params, NamedSharding(mesh, P()))
  n = len(split)
  outs = []
  for start in range(0, n, batch_size):
    inputs = [getattr(split, k)[start:start + batch_size] for k in INPUTS]
    pad = batch_size - len(inputs[0])
    if pad:  # One shape for every batch: no recompilation for the last one.
      inputs = [np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) for x in inputs]
    outs.append(_forward(model, params, *jax.device_put(inputs, batch_sharding)))
  return {k: np.concatenate([np.asarray(o[k]) for o in outs])[:n] for k in outs[0]}


def evaluate_split(model: HAN, params, split: Split, batch_size: int) -> dict:
  """The ten numbers of METHOD.md section 5 and per-class segment F on a split with truth."""
  out = predict(model, params, split, batch_size)
  pred_a, pred_v = metrics.segment_predictions(out['frame_prob'], out['a_prob'], out['v_prob'])
  return {
      'results': metrics.evaluate(pred_a, pred_v, split.gt_a, split.gt_v),
      'per_class_audio': metrics.per_class_f(pred_a, split.gt_a),
      'per_class_visual': metrics.per_class_f(pred_v, split.gt_v),
  }


def targets_from_labels(labels: np.ndarray, loss_config, drop_a=None, drop_v=None,
                        audio_drop_clears_global: bool = True) -> dict[str, np.ndarray]:
  """Training targets (N, 25) each: the weak labels, or the refined ones given drop masks."""
  y_global, y_a, y_v = losses.mil_targets(
      labels, drop_a, drop_v, visual_label_smoothing=loss_config.visual_label_smoothing,
      audio_drop_clears_global=audio_drop_clears_global)
  return {'y_global': np.asarray(y_global, np.float32), 'y_a': np.asarray(y_a, np.float32),
          'y_v': np.asarray(y_v, np.float32)}


STAGE_INDEX = {'base': 0, 'final': 1}
# Key implementation of every seeded stream (init, shuffling, dropout keys). It was chosen
# when dropout masks came from jax.random, which compiled 4x faster with 'rbg' keys than with
# threefry ones; models.han.Dropout now draws its masks itself, so the choice no longer sets
# the speed, but changing it changes every seeded result.
RNG_IMPL = 'rbg'


def stage_rng(seed: int, stage: str):
  return jax.random.fold_in(jax.random.key(seed, impl=RNG_IMPL), STAGE_INDEX[stage])


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _truncate_metrics(path: str, stage: str, last_epoch: int) -> None:
  """Drops the records of `stage` after `last_epoch` (written before a kill, redone now)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  keep = [r for r in records if not (r['stage'] == stage and r['epoch'] > last_epoch)]
  if len(keep) != len(records):
    _write_lines(path, [json.dumps(r) for r in keep])


def _write_lines(path: str, lines: list[str]) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(''.join(line + '\n' for line in lines))
  os.replace(tmp, path)


def _append_metrics(path: str, record: dict) -> None:
  with open(path, 'a') as f:
    f.write(json.dumps(record) + '\n')
    f.flush()
    os.fsync(f.fileno())


def _mean_terms(terms: dict) -> dict:
  return {k: float(np.mean(v)) for k, v in terms.items()}


def _check_finite(terms: dict, stage: str, epoch: int, last_good: str) -> None:
  bad = ~np.isfinite(terms['total'])
  if bad.any():
    step = int(np.argmax(bad))
    raise FloatingPointError(
        f'Stage {stage!r}, epoch {epoch}, step {step} of the epoch: the loss is '
        f'{terms["total"][step]} ({ {k: float(v[step]) for k, v in terms.items()} }). '
        f'Last good checkpoint: {last_good}.')


def stage_paths(workdir: str, stage: str) -> dict[str, str]:
  d = os.path.join(workdir, stage)
  return {'dir': d, 'checkpoints': os.path.join(d, 'checkpoints'), 'best': os.path.join(d, 'best'),
          'report': os.path.join(d, 'report_test.json')}


def _restore_latest(directory: str, item: str, abstract):
  mngr = ocp.CheckpointManager(directory)
  try:
    step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {directory}.')
    return mngr.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.StandardRestore(abstract)}))[item]
  finally:
    mngr.close()


def _abstract_state(config) -> TrainState:
  model = HAN.from_config(config.model)
  return jax.eval_shape(lambda: create_train_state(
      model, optax.adam(make_schedule(config.train, 1)), jax.random.key(0, impl=RNG_IMPL)))


def restore_state(config, workdir: str, stage: str) -> TrainState:
  """The last saved train state of a stage."""
  return _restore_latest(stage_paths(workdir, stage)['checkpoints'], 'state',
                         _abstract_state(config))


def stage_params(config, workdir: str, stage: str, which: str = 'last'):
  """The parameters a finished stage hands on: its last epoch, or its best validation epoch."""
  if which == 'best_val':
    return _restore_latest(stage_paths(workdir, stage)['best'], 'params',
                           _abstract_state(config).params)
  if which != 'last':
    raise ValueError(f'train.base_selection must be last or best_val, not {which!r}.')
  return restore_state(config, workdir, stage).params


def train_stage(config: ml_collections.ConfigDict, workdir: str, stage: str,
                targets: dict[str, np.ndarray], splits: dict[str, Split]) -> dict:
  """Trains a fresh model of one stage on `targets`, resuming from its last saved epoch.

  Each epoch: train, evaluate val, append to <workdir>/metrics.jsonl, checkpoint. At the end,
  evaluate test and write <workdir>/<stage>/report_test.json (which marks the stage done).
  Returns the test evaluation.
  """
  paths = stage_paths(workdir, stage)
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  tc = config.train
  train_split = splits['train']
  model = HAN.from_config(config.model)
  mesh = make_mesh()
  schedule, tx, train_steps = make_training(
      model, ml_collections.FrozenConfigDict(tc), ml_collections.FrozenConfigDict(config.loss),
      len(train_split), mesh)
  init_rng, train_rng = jax.random.split(stage_rng(config.seed, stage))
  replicated = NamedSharding(mesh, P())
  state = jax.device_put(create_train_state(model, tx, init_rng), replicated)

  options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
  ckpt = ocp.CheckpointManager(paths['checkpoints'], options=options)
  best = ocp.CheckpointManager(paths['best'], options=options)
  meta = {'epoch': 0, 'best_val': -1.0, 'best_epoch': 0}
  if ckpt.latest_step() is not None:
    restored = ckpt.restore(ckpt.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state)), meta=ocp.args.JsonRestore()))
    state, meta = jax.device_put(restored.state, replicated), restored.meta
    print(f'[{stage}] resuming after epoch {meta["epoch"]} from {paths["checkpoints"]}', flush=True)
  _truncate_metrics(metrics_path, stage, meta['epoch'])

  data = device_arrays(train_split, targets, mesh)
  for epoch in range(meta['epoch'] + 1, tc.epochs + 1):
    start = time.perf_counter()
    state, terms = train_epoch(
        state, train_steps, data, jax.random.fold_in(train_rng, epoch), batch_size=tc.batch_size,
        steps_per_call=tc.steps_per_call, lr_fn=schedule, desc=f'{stage} {epoch}/{tc.epochs}')
    _check_finite(terms, stage, epoch, f'{paths["checkpoints"]} (epoch {meta["epoch"]})'
                  if meta['epoch'] else 'none (the stage had not saved any epoch)')
    val = evaluate_split(model, state.params, splits['val'], tc.eval_batch_size)['results']
    record = {'stage': stage, 'epoch': epoch, 'step': int(state.step),
              'lr': float(schedule(int(state.step) - 1)), 'train': _mean_terms(terms),
              'val': val, 'seconds': time.perf_counter() - start}
    print(f'[{stage}] epoch {epoch}/{tc.epochs}  loss {record["train"]["total"]:.4f}  '
          f'val Type@AV {val["segment/type"]:.1f} / {val["event/type"]:.1f} (segment / event)  '
          f'{record["seconds"]:.1f}s', flush=True)
    _append_metrics(metrics_path, record)
    if val['segment/type'] > meta['best_val']:
      meta.update(best_val=val['segment/type'], best_epoch=epoch)
      best.save(epoch, args=ocp.args.Composite(params=ocp.args.StandardSave(state.params)))
    meta['epoch'] = epoch
    ckpt.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)))
  ckpt.wait_until_finished()
  best.wait_until_finished()
  ckpt.close()
  best.close()

  test = evaluate_split(model, state.params, splits['test'], tc.eval_batch_size)
  print(metrics.format_table(test['results'], title=f'{config.name} [{stage}] test, epoch {tc.epochs}'))
  metrics.write_report(paths['report'], test['results'], split='test', num_clips=len(splits['test']),
                       step=int(state.step), config_name=config.name,
                       per_class_audio=test['per_class_audio'],
                       per_class_visual=test['per_class_visual'])
  return test
