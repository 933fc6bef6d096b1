"""The benchmark sections: attention, train, refine, seeds, eval, extract, phases, e2e, memory;
each times the library against its yardstick (PyTorch, the matmul rate, K = 1, separate runs,
the whole run, the reference's loop, the features' bytes) and returns its rows and targets.

A section is a function of the run's context, a dict: 'sizes' (Sizes), 'config' (configs.ma)
and 'torch_device'; it returns (rows, targets), as benchmarks.report builds them.
"""

import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import torch

from avvp_jax import metrics, placement, refine, train
from avvp_jax.extract import convert, extractor
from avvp_jax.data import synthetic
from avvp_jax.data.classes import NUM_SEGMENTS
from avvp_jax.data.split import FEATURES, Split
from avvp_jax.models import HAN, HybridAttentionLayer
from benchmarks import flops, profiling, torch_extract, torch_han
from benchmarks.report import format_profile, result_row, target
from benchmarks.timing import (Timings, budgeted, interleaved, jax_call, matmul_probe,
                               products_probe, torch_call)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MA_CONFIG = '--config=' + os.path.join(ROOT, 'configs', 'ma.py')
BATCH = 16  # The paper's batch size: the train-step targets and the epoch use it.
LLP_TRAIN_CLIPS = 10_000
EPOCH_STEPS = -(-LLP_TRAIN_CLIPS // BATCH)
PRODUCTS_ROW = 'matrix products of the train step alone'


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Problem sizes and repetitions of one profile."""
  attention_batches: tuple[int, ...]
  step_batches: tuple[int, ...]  # BATCH first, then a large batch.
  epoch_steps: int  # Steps of the LLP epoch timed; the epoch time is extrapolated from them.
  refine_clips: int
  refine_pairs_per_batch: int
  partners: tuple[int, ...]  # 1 first.
  eval_clips: int
  eval_batch: int
  matmul_size: int  # n of the n x n x n jnp.dot that measures the matmul rate.
  budget_s: float  # Seconds per comparison; sets the repetitions of the fast ones.
  min_reps: int
  max_reps: int
  slow_reps: int  # Repetitions of the slow comparisons (epoch, stage 2).
  loader_workers: int  # DataLoader worker processes of the PyTorch epoch.
  profile_calls: int  # Train steps traced by jax.profiler; 0: no profile.
  epoch_clips: int = LLP_TRAIN_CLIPS  # Clips of the training split.
  seeds: tuple[int, ...] = (1, 4, 8)  # Models trained in one program; 1 first.
  seeds_steps: int = 10  # Train steps (one call) per model in the seeds comparison.
  # Feature extraction: inputs per call of VGGish (examples), ResNet-152 (frames) and
  # R(2+1)D-18 (8-frame clips), 10 / 80 / 10 of them per video; and the image side of the
  # ResNet-152 and R(2+1)D-18 inputs (224 and 112 in the release).
  extract_inputs: tuple[int, int, int] = (10, 16, 2)
  extract_sides: tuple[int, int] = (224, 112)
  # The main command timed by phase (configs/ma.py, with these overrides), with an empty
  # XLA cache ('cold') and then with the cache it left ('warm').
  phases_overrides: tuple[str, ...] = ()
  phases_runs: tuple[str, ...] = ('cold', 'warm')
  # The three MA stages, the main command (cold XLA cache, no pictures) against
  # benchmarks/torch_pipeline.py, alternated for `e2e_rounds` rounds, with these overrides.
  e2e_overrides: tuple[str, ...] = ()
  e2e_rounds: int = 3
  # The main command's peak resident memory at these training-split sizes, with these
  # overrides (the peak comes from the data, not from the number of epochs).
  memory_clips: tuple[int, ...] = (2_000, 10_000, 40_000)
  memory_overrides: tuple[str, ...] = ('--config.train.epochs=1', '--config.plots=False')


# A tiny main command: every code path of a whole run in seconds.
QUICK_RUN = ('--config.data.synthetic.num_train=64', '--config.data.synthetic.num_val=16',
             '--config.data.synthetic.num_test=32', '--config.train.epochs=1',
             '--config.model.d_model=32', '--config.model.ffn_dim=32', '--config.plots=False')

PROFILES = {
    # Toy sizes and one compilation per function: every code path in seconds, figures
    # meaningless. No profile: the first trace of a program costs a compilation.
    'quick': Sizes(attention_batches=(BATCH,), step_batches=(BATCH,), epoch_steps=2,
                   refine_clips=16, refine_pairs_per_batch=16, partners=(1, 16),
                   eval_clips=48, eval_batch=16, matmul_size=256, budget_s=0.0, min_reps=2,
                   max_reps=2, slow_reps=1, loader_workers=0, profile_calls=0,
                   epoch_clips=64, seeds=(1, 2), seeds_steps=2, extract_inputs=(2, 2, 1),
                   extract_sides=(32, 16), phases_overrides=QUICK_RUN, phases_runs=('cold',),
                   e2e_overrides=QUICK_RUN, e2e_rounds=1, memory_clips=(64,),
                   memory_overrides=QUICK_RUN),
    # The step-level sections about 6 minutes on 2 cores, the whole suite about 35 (phases, e2e
    # and memory run the main command). DataLoader workers would compete with the compute threads.
    # 50 epoch steps: two calls of train_steps at the config's 25 steps per call.
    'cpu': Sizes(attention_batches=(16, 64, 256), step_batches=(BATCH, 256), epoch_steps=50,
                 refine_clips=128, refine_pairs_per_batch=128, partners=(1, 4, 16),
                 eval_clips=1200, eval_batch=256, matmul_size=2048, budget_s=10.0,
                 min_reps=5, max_reps=200, slow_reps=3, loader_workers=0, profile_calls=5,
                 e2e_overrides=('--config.data.synthetic.num_train=1000',
                                '--config.train.epochs=4')),
    # GPU / TPU: batches that fill the chip, the whole epoch, and stage 2 on the LLP train
    # split at 1,024 pairs per batch; a few minutes.
    'accelerator': Sizes(attention_batches=(16, 64, 256, 4096), step_batches=(BATCH, 4096),
                         epoch_steps=LLP_TRAIN_CLIPS // BATCH, refine_clips=LLP_TRAIN_CLIPS,
                         refine_pairs_per_batch=1024, partners=(1, 4, 16), eval_clips=1200,
                         eval_batch=256, matmul_size=8192, budget_s=3.0, min_reps=10,
                         max_reps=500, slow_reps=3, loader_workers=4, profile_calls=10,
                         seeds_steps=25, extract_inputs=(80, 640, 80), e2e_rounds=2),
}


def _budgeted(candidates: dict, sizes: Sizes) -> Timings:
  """timing.budgeted at the profile's budget and repetitions."""
  return budgeted(candidates, sizes.budget_s, sizes.min_reps, sizes.max_reps)


@functools.lru_cache
def _split(num_clips: int, name: str) -> Split:
  return synthetic.generate_split(num_clips, 0, name)


@functools.lru_cache
def _init_params(model: HAN):
  """The model's initial parameters, shared by the sections: jitted (op by op, Flax's init
  dispatches for seconds), its compilation is the costliest part of a quick run."""
  return jax.jit(lambda key: train.create_train_state(model, optax.identity(), key).params)(
      jax.random.key(0, impl=train.RNG_IMPL))


def _head(split: Split, n: int) -> Split:
  return dataclasses.replace(split, **{
      f.name: getattr(split, f.name)[:n] for f in dataclasses.fields(split)
      if getattr(split, f.name) is not None})


def _first(arrays: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
  """The first n rows of each array, cycling where there are fewer."""
  return {k: v[np.arange(n) % len(v)] for k, v in arrays.items()}


def _torch_batch(arrays: dict[str, np.ndarray], device) -> dict[str, torch.Tensor]:
  return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}


def bench_attention(ctx: dict) -> tuple[list, list]:
  """The jitted hybrid-attention layer, forward and forward + backward, against PyTorch's."""
  sizes, device = ctx['sizes'], ctx['torch_device']
  c = ctx['config'].model
  layer = HybridAttentionLayer(c.num_heads, c.ffn_dim, c.dropout)
  probe = np.zeros((1, 10, c.d_model), np.float32)
  params = jax.jit(lambda key: layer.init(key, probe, probe, train=False))(
      jax.random.key(0))['params']
  t_layer = torch_han.load_flax_params(
      torch_han.HybridAttentionLayer(c.d_model, c.num_heads, c.ffn_dim, c.dropout),
      params).to(device)
  forward = jax.jit(lambda p, q, o: layer.apply({'params': p}, q, o, train=False))

  def loss(p, q, o, key):
    return jnp.sum(layer.apply({'params': p}, q, o, train=True, rngs={'dropout': key}))

  backward = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  key = jax.random.key(0, impl=train.RNG_IMPL)
  rng = np.random.default_rng(0)
  rows = []
  for batch in sizes.attention_batches:
    q, o = (rng.standard_normal((batch, 10, c.d_model), np.float32) for _ in range(2))
    qj, oj = jnp.asarray(q), jnp.asarray(o)
    qt, ot = (torch.from_numpy(x).to(device).requires_grad_() for x in (q, o))
    counts = flops.total(flops.hybrid_layer(10, c.d_model, c.ffn_dim, sequences=batch))

    def t_forward():
      t_layer.eval()
      with torch.no_grad():
        t_layer(qt, ot)

    def t_backward():
      t_layer.train()
      torch.autograd.grad(t_layer(qt, ot).sum(), [*t_layer.parameters(), qt, ot])

    for name, jax_fn, torch_fn, flop in (
        ('forward', lambda: forward(params, qj, oj), t_forward, counts.forward),
        ('forward + backward', lambda: backward(params, qj, oj, key), t_backward,
         counts.forward + counts.backward)):
      t = _budgeted({'jax': jax_call(jax_fn), 'torch': torch_call(torch_fn)}, sizes)
      rows.append(result_row('attention', f'hybrid-attention layer {name}, batch {batch}',
                      jax_s=t['jax'], torch_s=t['torch'], speedup=t.ratio('torch', 'jax'),
                      clips=batch, flop=flop))
  return rows, []


class _JaxTrainer:
  """The library's jitted train_steps on the device-resident split, holding the state (the
  call donates it)."""

  def __init__(self, ctx: dict, split: Split, targets: dict[str, np.ndarray]):
    config = ctx['config']
    self.model = HAN.from_config(config.model)
    mesh = placement.make_mesh()
    self.steps_per_call = config.train.steps_per_call
    self.schedule, tx, self.train_steps = train.make_training(
        self.model, ml_collections.FrozenConfigDict(config.train),
        ml_collections.FrozenConfigDict(config.loss), len(split), mesh)
    self.key = jax.random.key(0, impl=train.RNG_IMPL)
    # From the shared parameters, copied: the step donates them.
    state = train.train_state(jax.tree.map(jnp.copy, _init_params(self.model)), tx)
    # Placed as the step returns it (as stages.train_stage does): else its second call
    # compiles again, for the new placement.
    self.state = jax.device_put(state, placement.replicated(mesh))
    self.data = train.device_arrays(split, targets, mesh)
    self.calls = 0

  def _next_key(self):
    self.calls += 1
    return jax.random.fold_in(self.key, self.calls)

  def indices(self, batch: int) -> jax.Array:
    """The clips of one step, (1, batch): one row of train_steps."""
    return (jnp.arange(batch) % self.data['y_global'].shape[-2])[None]

  def step(self, idx: jax.Array):
    """One train step: a call of train_steps with the one row idx (1, B)."""
    self.state, terms = self.train_steps(self.state, self.data, idx, self._next_key(), 0, 1)
    return self.state, terms

  def epoch(self):
    """train.train_epoch: one pass over the device-resident split."""
    self.state, terms = train.train_epoch(
        self.state, self.train_steps, self.data, self._next_key(), batch_size=BATCH,
        steps_per_call=self.steps_per_call, lr_fn=self.schedule, desc='benchmark epoch')
    return self.state, terms

  def hlo(self, idx: jax.Array) -> str:
    return self.train_steps.lower(self.state, self.data, idx, self.key, 0, 1).compile().as_text()


@dataclasses.dataclass
class _TrainBench:
  """What the train-step and epoch comparisons share."""
  sizes: Sizes
  device: torch.device
  split: Split
  targets: dict[str, np.ndarray]
  trainer: _JaxTrainer
  torch_step: Callable[[dict], torch.Tensor]
  matmul: Callable[[], None]
  matmul_flop: int


def _train_bench(ctx: dict) -> _TrainBench:
  sizes, device = ctx['sizes'], ctx['torch_device']
  split = _split(sizes.epoch_clips, 'train')
  targets = train.targets_from_labels(split.labels, ctx['config'].loss)
  # The JAX side holds the clips of the epoch steps timed (its step and epoch programs then
  # take one data shape); the PyTorch DataLoader draws from the whole split.
  timed = min(sizes.epoch_steps * BATCH, len(split))
  trainer = _JaxTrainer(ctx, _head(split, timed), {k: v[:timed] for k, v in targets.items()})
  t_model = torch_han.load_flax_params(torch_han.HAN(), trainer.state.params).to(device)
  matmul, matmul_flop = matmul_probe(sizes.matmul_size)
  return _TrainBench(sizes, device, split, targets, trainer,
                     torch_han.make_train_step(t_model, ctx['config'].train.lr), matmul,
                     matmul_flop)


def _train_step(b: _TrainBench, batch: int) -> tuple[list, list]:
  """One batch size: JAX's step, PyTorch's at 80 frames (and on segment means at BATCH)."""
  per_clip, per_clip_frames = flops.per_clip(), flops.per_clip(frames_2d=80)
  idx = b.trainer.indices(batch)
  host = _first({**{k: getattr(b.split, k) for k in FEATURES}, **b.targets}, batch)
  frames = _torch_batch({**host, 'video_2d': torch_han.to_frames(host['video_2d'])}, b.device)
  products, products_flop = products_probe(batch)
  candidates = {'jax': jax_call(lambda: b.trainer.step(idx)),
                'torch': torch_call(lambda: b.torch_step(frames)), 'matmul': b.matmul,
                'products': products}
  if batch == BATCH:  # How much of the gap is fc_v on 80 frames rather than 10.
    means = _torch_batch(host, b.device)
    candidates['torch_means'] = torch_call(lambda: b.torch_step(means))
  t = _budgeted(candidates, b.sizes)
  peak = b.matmul_flop / t['matmul']
  torch_fraction = batch * per_clip_frames / b.matmul_flop * t.ratio('matmul', 'torch')
  r = result_row('train', f'train step, batch {batch}', jax_s=t['jax'], torch_s=t['torch'],
          speedup=t.ratio('torch', 'jax'), clips=batch, flop=batch * per_clip,
          peak_fraction=batch * per_clip / b.matmul_flop * t.ratio('matmul', 'jax'),
          note=f'matmul rate {peak / 1e9:.1f} GFLOP/s; PyTorch at 80 frames: '
               f'{batch * per_clip_frames / t["torch"] / 1e9:.1f} GFLOP/s, '
               f'{torch_fraction:.0%} of the rate')
  ceiling = result_row('train', f'{PRODUCTS_ROW}, batch {batch}', jax_s=t['products'],
                torch_s=t['torch'], speedup=t.ratio('torch', 'products'), clips=batch,
                flop=products_flop,
                peak_fraction=products_flop / b.matmul_flop * t.ratio('matmul', 'products'),
                note=f'the step\'s {len(flops.products(clips=batch))} matrix products '
                     f'(flops.products) on random operands, nothing else, free to overlap: an '
                     f'optimistic bound; the JAX step takes {t.ratio("jax", "products"):.2f}x '
                     f'this')
  if batch != BATCH:
    return [r, ceiling], []
  rows = [r, ceiling,
          result_row('train', f'train step, batch {batch}, PyTorch on segment means',
              jax_s=t['jax'], torch_s=t['torch_means'],
              speedup=t.ratio('torch_means', 'jax'),
              note='diagnostic: PyTorch with fc_v on the 10 segment means')]
  peak_figures = {'products_matmul_fraction': ceiling['peak_fraction'],
                  'step_over_products': t.ratio('jax', 'products')}
  if b.sizes.profile_calls:
    profile = profiling.breakdown(jax_call(lambda: b.trainer.step(idx)), b.trainer.hlo(idx),
                                  b.sizes.profile_calls)
    rows.append(result_row('train', f'train step profile, batch {batch} (JAX)',
                    note=f'share of op time: {format_profile(profile)}'))
    peak_figures['matrix_products_share'] = profile['matrix products']
  return rows, [
      target('step_vs_torch', r['speedup'], r['speedup'] >= 2, f'{r["speedup"]:.2f}x', {
          'jax_matmul_fraction': r['peak_fraction'], 'torch_matmul_fraction': torch_fraction,
          'flop_ratio': per_clip_frames / per_clip,
          'segment_means_speedup': t.ratio('torch_means', 'jax'),
          'products_only_speedup': ceiling['speedup']}),
      target('step_vs_peak', r['peak_fraction'], r['peak_fraction'] >= 0.7,
             f'{r["peak_fraction"]:.0%}', peak_figures)]


def epoch_figures(step: dict, products: dict, epoch: dict) -> dict[str, float]:
  """The epoch ratio's parts, from the rows of the train step and of its products alone at
  BATCH and of the epoch (its times are of EPOCH_STEPS steps). In median times, the epoch's
  speed-up is train_step_speedup x torch_epoch_step_over_step / jax_epoch_step_over_step;
  products_only_speedup is an epoch of PyTorch's over one of steps that did nothing but their
  matrix products, the bound."""
  jax_step, torch_step = epoch['jax_s'] / EPOCH_STEPS, epoch['torch_s'] / EPOCH_STEPS
  return {'train_step_speedup': step['torch_s'] / step['jax_s'],
          'jax_epoch_step_over_step': jax_step / step['jax_s'],
          'torch_epoch_step_over_step': torch_step / step['torch_s'],
          'products_only_speedup': torch_step / products['jax_s']}


def _train_epoch(b: _TrainBench, step_row: dict, products_row: dict) -> tuple[list, list]:
  """The LLP epoch: train.train_epoch against a PyTorch loop over a DataLoader; the rows of
  the train step and of its products alone at BATCH split the ratio (epoch_figures)."""
  loader = torch.utils.data.DataLoader(
      torch_han.ClipDataset(b.split.audio, b.split.video_2d, b.split.video_3d, b.targets),
      batch_size=BATCH, shuffle=True, num_workers=b.sizes.loader_workers,
      pin_memory=b.device.type == 'cuda', persistent_workers=b.sizes.loader_workers > 0)
  steps = b.trainer.data['audio'].shape[0] // BATCH
  t = interleaved({'jax': jax_call(b.trainer.epoch),
                   'torch': torch_call(lambda: torch_han.train_epoch(b.torch_step, loader,
                                                                     b.device, steps)),
                   'matmul': b.matmul}, b.sizes.slow_reps)
  scale = EPOCH_STEPS / steps  # Extrapolation from the steps timed to the whole epoch.
  per_clip = flops.per_clip()
  timed = 'whole epoch timed' if steps == EPOCH_STEPS else (
      f'{steps} of {EPOCH_STEPS} steps timed, extrapolated')
  r = result_row('train', f'epoch, {LLP_TRAIN_CLIPS:,} clips, batch {BATCH}', jax_s=t['jax'] * scale,
          torch_s=t['torch'] * scale, speedup=t.ratio('torch', 'jax'), clips=LLP_TRAIN_CLIPS,
          flop=LLP_TRAIN_CLIPS * per_clip,
          peak_fraction=steps * BATCH * per_clip / b.matmul_flop * t.ratio('matmul', 'jax'),
          note=f'{timed}; JAX: train.train_epoch over those steps\' {steps * BATCH:,} clips, '
               f'device-resident; PyTorch: DataLoader over the {len(b.split):,} per-clip '
               f'arrays, {b.sizes.loader_workers} workers')
  return [r], [target('epoch_vs_torch', r['speedup'], r['speedup'] >= 3,
                      f'{r["speedup"]:.2f}x ({r["jax_s"]:.1f} s vs {r["torch_s"]:.1f} s)',
                      epoch_figures(step_row, products_row, r))]


def bench_train(ctx: dict) -> tuple[list, list]:
  """Train step at BATCH and a large batch, and an LLP epoch, against PyTorch."""
  b = _train_bench(ctx)
  rows, results = [], []
  for batch in ctx['sizes'].step_batches:
    step_rows, step_results = _train_step(b, batch)
    rows += step_rows
    results += step_results
  # rows[0] and rows[1]: the step at BATCH and its products alone.
  epoch_rows, epoch_results = _train_epoch(b, rows[0], rows[1])
  return rows + epoch_rows, results + epoch_results


def refine_flop_ratio(k: int) -> float:
  """FLOPs per clip of stage 2 with K partners over K = 1.

  Under jax.vmap over the partners, the embedding of clip i's own tracks does not depend on
  the partner and runs once; each partner adds its own embeddings and two passes of the
  layer and heads (one per swapped pairing).
  """
  counts = {c.name: c.forward for c in flops.han(contrastive=False)}
  embed = sum(counts[n] for n in ('fc_a', 'fc_v', 'fc_st', 'fc_fusion'))
  pairing = sum(counts.values()) - embed  # The layer and heads on both sequences.
  cost = lambda k: embed + k * (embed + 2 * pairing)
  return cost(k) / cost(1)


def bench_refine(ctx: dict) -> tuple[list, list]:
  """Stage 2: clips per second of refine.swapped_probs at K partners."""
  sizes = ctx['sizes']
  model = HAN.from_config(ctx['config'].model)
  split = _split(sizes.refine_clips, 'train')
  params = _init_params(model)
  candidates = {}
  for k in sizes.partners:
    partners = refine.draw_partners(split.labels, k, np.random.default_rng(k))
    candidates[k] = lambda p=partners: refine.swapped_probs(
        model, params, split, p, sizes.refine_pairs_per_batch)
  t = interleaved(candidates, sizes.slow_reps)
  base = t[1] / sizes.refine_clips
  rows = []
  for k in sizes.partners:
    rows.append(result_row('refine', f'stage 2 track swap, K = {k}', jax_s=t[k],
                    clips=sizes.refine_clips,
                    note=f'per clip {t[k] / sizes.refine_clips / base:.2f}x K = 1 (FLOPs: '
                         f'{refine_flop_ratio(k):.2f}x); {sizes.refine_clips:,} clips, '
                         f'{sizes.refine_pairs_per_batch} pairs per batch'))
  k = sizes.partners[-1]
  ratio = t.ratio(k, 1)
  return rows, [target('refine_k16', ratio, ratio < k, f'{ratio:.2f}x (K = {k})',
                       {'flop_ratio': refine_flop_ratio(k)})]


def bench_eval(ctx: dict) -> tuple[list, list]:
  """Evaluation of a test-sized split: the forward pass, with and without the metrics, and
  the metrics alone."""
  sizes = ctx['sizes']
  model = HAN.from_config(ctx['config'].model)
  split = _split(sizes.eval_clips, 'test')
  params = _init_params(model)
  out = train.predict(model, params, split, sizes.eval_batch)

  def metrics_only():
    pred_a, pred_v = metrics.segment_predictions(out['frame_prob'], out['a_prob'],
                                                 out['v_prob'])
    return metrics.evaluate(pred_a, pred_v, split.gt_a, split.gt_v)

  t = _budgeted({
      'forward': lambda: train.predict(model, params, split, sizes.eval_batch),
      'evaluate': lambda: train.evaluate_split(model, params, split, sizes.eval_batch),
      'metrics': metrics_only}, sizes)
  n = sizes.eval_clips
  overhead = t.ratio('evaluate', 'forward')
  rows = [
      result_row('eval', f'forward pass, {n:,} clips (train.predict)', jax_s=t['forward'], clips=n,
          flop=n * flops.total(flops.han(contrastive=False)).forward),
      result_row('eval', f'forward + metrics, {n:,} clips (train.evaluate_split)',
                 jax_s=t['evaluate'], clips=n, note=f'{overhead:.2f}x the forward pass'),
      result_row('eval', f'metrics, {n:,} clips (vectorised)', jax_s=t['metrics'], clips=n,
          note='predictions to the ten numbers'),
  ]
  times = {'forward_s': t['forward'], 'evaluate_s': t['evaluate'], 'metrics_s': t['metrics']}
  return rows, [
      target('metrics_time', t['metrics'], t['metrics'] < 0.5, f'{t["metrics"]:.3f} s', times),
      target('eval_overhead', overhead, overhead <= 1.5, f'{overhead:.2f}x', times),
  ]


def bench_seeds(ctx: dict) -> tuple[list, list]:
  """M models trained in one vmapped program (`make_training(seeds=True)`) against M
  separate one-model calls, each of the same steps at batch 16."""
  sizes, config = ctx['sizes'], ctx['config']
  model = HAN.from_config(config.model)
  mesh = placement.make_mesh()
  split = _split(max(BATCH * sizes.seeds_steps, BATCH), 'train')
  frozen = (ml_collections.FrozenConfigDict(config.train),
            ml_collections.FrozenConfigDict(config.loss))
  targets = train.targets_from_labels(split.labels, config.loss)
  idx = jnp.resize(jnp.arange(len(split)), (sizes.seeds_steps, BATCH))
  _, tx, one = train.make_training(model, *frozen, len(split), mesh)
  _, _, many = train.make_training(model, *frozen, len(split), mesh, seeds=True)
  data = train.device_arrays(split, targets, mesh)
  params = _init_params(model)
  # Placed as the calls return them, so that no timed call compiles again.
  place = lambda state: jax.device_put(state, placement.replicated(mesh))
  held = {}  # The states, replaced by each call (the calls donate them).

  def separate(m):
    held[('one', m)] = [place(train.train_state(jax.tree.map(jnp.copy, params), tx))
                        for _ in range(m)]

    def call():
      key = jax.random.key(0, impl=train.RNG_IMPL)
      held[('one', m)] = [one(s, data, idx, key, 0, sizes.seeds_steps)[0]
                          for s in held[('one', m)]]
      return held[('one', m)]
    return call

  def together(m):
    held[('many', m)] = place(jax.tree.map(lambda x: jnp.stack([x] * m),
                                           train.train_state(params, tx)))
    data_m = train.device_arrays(split, {k: np.stack([v] * m) for k, v in targets.items()},
                                 mesh)
    keys = jnp.stack([jax.random.key(s, impl=train.RNG_IMPL) for s in range(m)])

    def call():
      held[('many', m)] = many(held[('many', m)], data_m, jnp.stack([idx] * m), keys, 0,
                               sizes.seeds_steps)[0]
      return held[('many', m)]
    return call

  candidates = {}
  for m in sizes.seeds:
    candidates[('one', m)] = jax_call(separate(m))
    if m > 1:
      candidates[('many', m)] = jax_call(together(m))
  t = interleaved(candidates, sizes.slow_reps)
  rows, one_model = [], t[('one', 1)]
  for m in sizes.seeds[1:]:
    rows.append(result_row(
        'seeds', f'{m} models in one program, {sizes.seeds_steps} steps each, batch {BATCH}',
        jax_s=t[('many', m)], clips=m * sizes.seeds_steps * BATCH,
        note=f'{t.ratio(("many", m), ("one", m)):.2f}x {m} separate runs; '
             f'{t.ratio(("many", m), ("one", 1)):.2f}x one run'))
  rows.insert(0, result_row('seeds', f'one model, {sizes.seeds_steps} steps, batch {BATCH}',
                            jax_s=one_model, clips=sizes.seeds_steps * BATCH))
  m = sizes.seeds[-1]
  ratio = t.ratio(('many', m), ('one', 1))
  return rows, [target('seeds_8', ratio, ratio <= 2, f'{ratio:.2f}x (M = {m})',
                       {'separate_runs_ratio': t.ratio(('many', m), ('one', m))})]


def bench_extract(ctx: dict) -> tuple[list, list]:
  """The three feature networks on one call's inputs, Flax (jitted) against the PyTorch
  references at the same random weights; throughput in videos (10 VGGish examples, 80
  ResNet-152 frames, 10 R(2+1)D-18 clips each)."""
  sizes, device = ctx['sizes'], ctx['torch_device']
  side, clip_side = sizes.extract_sides
  shapes = {'vggish': (1, 96, 64), 'res152': (3, side, side),
            'r2plus1d_18': (3, 8, clip_side, clip_side)}  # One input, PyTorch's layout.
  per_video = {'vggish': 10, 'res152': 80, 'r2plus1d_18': 10}
  rng = np.random.default_rng(0)
  rows = []
  for (name, net), n in zip(extractor.NETWORKS.items(), sizes.extract_inputs):
    model, weights = torch_extract.network(name)
    model = model.to(device)
    x = rng.standard_normal((n,) + shapes[name]).astype(np.float32)
    x_torch = torch.from_numpy(x).to(device)
    # Channels last; VGGish's examples have no channel axis in Flax.
    x_jax = jnp.asarray(x[:, 0] if name == 'vggish' else np.moveaxis(x, 1, -1))
    variables = jax.device_put(convert.torch_to_flax(weights))
    apply = jax.jit(net.module.apply)

    def reference():
      with torch.no_grad():
        model(x_torch)

    t = interleaved({'jax': jax_call(lambda: apply(variables, x_jax)),
                     'torch': torch_call(reference)}, sizes.slow_reps)
    videos = n / per_video[name]
    rows.append(result_row(
        'extract', f'{name}, {n} inputs of {shapes[name]} ({videos:g} videos)',
        jax_s=t['jax'], torch_s=t['torch'], speedup=t.ratio('torch', 'jax'), clips=videos,
        note=f'per video, this network alone: {t["jax"] / videos:.2f} s (JAX), '
             f'{t["torch"] / videos:.2f} s (PyTorch); clips/s counts videos'))
  return rows, []


def bench_phases(ctx: dict) -> tuple[list, list]:
  """The main command (configs/ma.py, all three stages and the pictures) timed by phase
  (benchmarks/phase_run.py), once with an empty XLA cache and once with the cache it left."""
  sizes = ctx['sizes']
  runs = {}
  with tempfile.TemporaryDirectory() as tmp:
    env = {**os.environ, 'JAX_COMPILATION_CACHE_DIR': os.path.join(tmp, 'xla')}
    for run in sizes.phases_runs:
      out = os.path.join(tmp, f'{run}.json')
      subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'phase_run.py'),
                      MA_CONFIG,
                      f'--workdir={os.path.join(tmp, run)}', f'--json={out}',
                      *sizes.phases_overrides], check=True, env=env, cwd=tmp,
                     stdout=subprocess.DEVNULL)
      with open(out) as f:
        runs[run] = json.load(f)
  rows = []
  for phase in runs['cold']:
    if phase == 'wall' or not runs['cold'][phase]:  # Not run (pictures off in 'quick').
      continue
    shares = {r: runs[r][phase] / runs[r]['wall'] for r in runs}
    rows.append(result_row(
        'phases', f'main command: {phase}', jax_s=runs['cold'][phase], note='; '.join(
            f'{r} {runs[r][phase]:.1f} s, {shares[r]:.1%} of {runs[r]["wall"]:.0f} s'
            for r in runs)))
  overhead = {r: 1 - runs[r]['training epochs'] / runs[r]['wall'] for r in runs}
  figures = {f'{r}_overhead': overhead[r] for r in runs}
  figures.update(cold_wall_s=runs['cold']['wall'], cold_compiles_s=runs['cold']['compiles'])
  return rows, [target('phases_overhead', overhead['cold'], overhead['cold'] <= 0.15,
                       ', '.join(f'{overhead[r]:.0%} ({r} cache)' for r in runs), figures)]


def _measured_run(command: list[str], env: dict, cwd: str) -> tuple[float, int]:
  """Runs a command to its end: (wall seconds, its peak resident memory in bytes)."""
  start = time.perf_counter()
  with open(os.devnull, 'w') as null:
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=null)
    _, status, usage = os.wait4(proc.pid, 0)
  seconds = time.perf_counter() - start
  if os.waitstatus_to_exitcode(status):
    raise subprocess.CalledProcessError(os.waitstatus_to_exitcode(status), command)
  return seconds, usage.ru_maxrss * 1024  # (kB on Linux.)


def bench_e2e(ctx: dict) -> tuple[list, list]:
  """The three MA stages on the same data: the main command (a fresh process, an empty XLA
  cache, no pictures) against benchmarks/torch_pipeline.py (the PyTorch port in the
  reference's loop), alternated round by round; wall times of whole processes."""
  sizes = ctx['sizes']
  walls = {'jax': [], 'torch': []}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(sizes.e2e_rounds):
      env = {**os.environ, 'JAX_COMPILATION_CACHE_DIR': os.path.join(tmp, f'xla{r}')}
      walls['jax'].append(_measured_run(
          [sys.executable, os.path.join(ROOT, 'launch', 'main.py'), MA_CONFIG,
           f'--workdir={os.path.join(tmp, f"run{r}")}', '--config.plots=False',
           *sizes.e2e_overrides], env, tmp)[0])
      walls['torch'].append(_measured_run(
          [sys.executable, os.path.join(ROOT, 'benchmarks', 'torch_pipeline.py'), MA_CONFIG,
           f'--json={os.path.join(tmp, f"torch{r}.json")}',
           f'--device={ctx["torch_device"].type}', *sizes.e2e_overrides], env, tmp)[0])
  ratios = np.array(walls['torch']) / np.array(walls['jax'])
  speedup = float(np.median(ratios))
  spread = f'{ratios.min():.2f}x-{ratios.max():.2f}x over {len(ratios)} rounds'
  run = ' '.join(o.removeprefix('--config.') for o in sizes.e2e_overrides) or 'the defaults'
  rows = [result_row('e2e', f'three MA stages ({run})', jax_s=float(np.median(walls['jax'])),
                     torch_s=float(np.median(walls['torch'])), speedup=speedup,
                     note=f'whole processes, cold XLA cache, no pictures; speed-up per round: '
                          f'{", ".join(f"{x:.2f}x" for x in ratios)}')]
  figures = {'median_speedup': speedup, 'min_speedup': ratios.min(),
             'max_speedup': ratios.max(), 'jax_median_s': np.median(walls['jax']),
             'torch_median_s': np.median(walls['torch'])}
  return rows, [target('pipeline_vs_torch', speedup, speedup >= 4,
                       f'{speedup:.2f}x (median; {spread})', figures)]


def bench_memory(ctx: dict) -> tuple[list, list]:
  """The main command's peak resident memory at growing training splits, against the bytes
  of the features of all three splits."""
  sizes = ctx['sizes']
  rows, figures, met = [], {}, True
  with tempfile.TemporaryDirectory() as tmp:
    env = {**os.environ, 'JAX_COMPILATION_CACHE_DIR': os.path.join(tmp, 'xla')}
    for n in sizes.memory_clips:
      workdir = os.path.join(tmp, str(n))
      seconds, peak = _measured_run(
          [sys.executable, os.path.join(ROOT, 'launch', 'main.py'), MA_CONFIG,
           f'--workdir={workdir}', *sizes.memory_overrides,
           f'--config.data.synthetic.num_train={n}'], env, tmp)
      with open(os.path.join(workdir, 'config.json')) as f:  # The sizes the run used.
        run = json.load(f)
      data, model = run['data']['synthetic'], run['model']
      clips = data['num_train'] + data['num_val'] + data['num_test']
      features = clips * NUM_SEGMENTS * 4 * (
          model['audio_dim'] + model['video_2d_dim'] + model['video_3d_dim'])
      limit = 1.5 * features + 1.5e9
      met = met and peak <= limit
      figures.update({f'peak_gb_{n}': peak / 1e9, f'features_gb_{n}': features / 1e9})
      rows.append(result_row(
          'memory', f'main command, {n:,} training clips ({clips:,} in all)', jax_s=seconds,
          note=f'peak resident {peak / 1e9:.2f} GB; features {features / 1e9:.2f} GB; peak = '
               f'{peak / features:.2f}x features, {(peak - features) / 1e9:.2f} GB over them; '
               f'limit {limit / 1e9:.2f} GB'))
  n = sizes.memory_clips[-1]
  shown = (f'{figures[f"peak_gb_{n}"]:.2f} GB at {n:,} training clips (features '
           f'{figures[f"features_gb_{n}"]:.2f} GB)')
  return rows, [target('memory_peak', figures[f'peak_gb_{n}'], met, shown, figures)]


BENCHES = {'attention': bench_attention, 'train': bench_train, 'refine': bench_refine,
           'seeds': bench_seeds, 'eval': bench_eval, 'extract': bench_extract,
           'phases': bench_phases, 'e2e': bench_e2e, 'memory': bench_memory}

