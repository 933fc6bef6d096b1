"""The benchmark suite of avvp-jax: speed is measured, not assumed.

Usage:
  python benchmarks/run.py                        # whole suite, sized for the backend found
  python benchmarks/run.py --quick                # every section at toy sizes, for CI
  python benchmarks/run.py --sections train,eval  # some sections only

Prints one table, writes it as JSON (--json, default benchmarks/results_<backend>.json) and
into the performance section of benchmarks/RESULTS.md (--results), with the machine and the
date. A quick run writes only where --json / --results say.

Every figure is a ratio within one run. The candidates of a comparison (JAX, PyTorch and a
large jnp.dot that measures the machine's matmul rate) are called in alternation and each
one's median is taken, so that load from other processes falls on all of them alike.
benchmarks/README.md says what each row means.
"""

import argparse
import dataclasses
import datetime
import functools
import json
import os
import platform
import sys
import time
from typing import Any, Callable

# libgomp's spinning barriers make PyTorch 2-10x slower, and erratic, where the cores are
# shared (other processes, or XLA's threads between calls); passive waiting gives PyTorch its
# best time. It must be set before torch loads its OpenMP runtime.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import torch
from jax.sharding import NamedSharding, PartitionSpec as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python benchmarks/run.py` puts benchmarks/, not the root, first.
  sys.path.insert(0, ROOT)

from avvp_jax import metrics, refine, train  # pylint: disable=g-import-not-at-top
from avvp_jax.data import synthetic
from avvp_jax.data.split import Split
from avvp_jax.models import HAN, HybridAttentionLayer
from benchmarks import flops, markdown, profiling, torch_han
from configs import ma

SECTIONS = ('attention', 'train', 'refine', 'eval')
BATCH = 16  # The paper's batch size: the train-step targets and the epoch use it.
LLP_TRAIN_CLIPS = 10_000
PRODUCTS_ROW = 'matrix products of the train step alone'
MARKERS = ('<!-- performance:start -->', '<!-- performance:end -->')
BLOCK = '<!-- performance:block {} -->'


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
  slow_reps: int  # Repetitions of the slow comparisons (epoch, stage 2, the plain loop).
  loader_workers: int  # DataLoader worker processes of the PyTorch epoch.
  profile_calls: int  # Train steps traced by jax.profiler; 0: no profile.
  epoch_clips: int = LLP_TRAIN_CLIPS  # Clips of the training split.


PROFILES = {
    # Toy sizes and one compilation per function: every code path in seconds, figures
    # meaningless. No profile: the first trace of a program costs a compilation.
    'quick': Sizes(attention_batches=(BATCH,), step_batches=(BATCH,), epoch_steps=2,
                   refine_clips=16, refine_pairs_per_batch=16, partners=(1, 16),
                   eval_clips=48, eval_batch=16, matmul_size=256, budget_s=0.0, min_reps=2,
                   max_reps=2, slow_reps=1, loader_workers=0, profile_calls=0,
                   epoch_clips=64),
    # About 5 minutes on 2 cores. DataLoader workers would compete with the compute threads.
    # 50 epoch steps: two calls of train_steps at the config's 25 steps per call.
    'cpu': Sizes(attention_batches=(16, 64, 256), step_batches=(BATCH, 256), epoch_steps=50,
                 refine_clips=128, refine_pairs_per_batch=128, partners=(1, 4, 16),
                 eval_clips=1200, eval_batch=256, matmul_size=2048, budget_s=10.0,
                 min_reps=5, max_reps=200, slow_reps=3, loader_workers=0, profile_calls=5),
    # GPU / TPU: batches that fill the chip, the whole epoch, and stage 2 on the LLP train
    # split at the config's pairs per batch; a few minutes.
    'accelerator': Sizes(attention_batches=(16, 64, 256, 4096), step_batches=(BATCH, 4096),
                         epoch_steps=LLP_TRAIN_CLIPS // BATCH, refine_clips=LLP_TRAIN_CLIPS,
                         refine_pairs_per_batch=1024, partners=(1, 4, 16), eval_clips=1200,
                         eval_batch=256, matmul_size=8192, budget_s=3.0, min_reps=10,
                         max_reps=500, slow_reps=3, loader_workers=4, profile_calls=10),
}

# The issue's targets: (what, limit, backends where it is judged).
TARGETS = {
    'step_vs_torch': ('train step at batch 16: JAX vs PyTorch', '>= 2x', ('cpu',)),
    'step_vs_peak': ('train step at batch 16: fraction of the matmul rate', '>= 60 %',
                     ('cpu',)),
    'epoch_vs_torch': ('epoch: JAX vs PyTorch DataLoader', '>= 3x', ('cpu', 'gpu', 'tpu')),
    'metrics_time': ('metrics, predictions to the ten numbers, 1,200 clips', '< 0.5 s',
                     ('cpu', 'gpu', 'tpu')),
    'eval_overhead': ('forward + metrics vs forward alone, 1,200 clips', '<= 1.5x',
                      ('cpu', 'gpu', 'tpu')),
    'refine_k16': ('stage 2 per clip: K = 16 vs K = 1', '< 16x', ('cpu', 'gpu', 'tpu')),
}
# What profiling found behind a large share of a profile category (added to the reasons).
FINDINGS = {
    'random bits': 'the dropout masks (models.han.Dropout: RngBitGenerator, ThreeFry on '
                   'CPU, the backend default elsewhere)',
    'update and gather': 'Adam reads and writes 7 parameter-sized arrays (4.6 M floats) per '
                         'step: memory-bound',
}


# Timing.


def _sync_torch() -> None:
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def jax_call(fn: Callable[[], Any]) -> Callable[[], None]:
  """A candidate that waits for the JAX work `fn` dispatches."""
  return lambda: jax.block_until_ready(fn())


def torch_call(fn: Callable[[], Any]) -> Callable[[], None]:
  """A candidate that waits for the PyTorch work `fn` queues (CUDA is asynchronous)."""
  def call():
    fn()
    _sync_torch()
  return call


def _seconds(fn: Callable[[], None]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


class Timings:
  """Seconds per call of each candidate, one per round of alternating calls."""

  def __init__(self, rounds: dict[str, list[float]]):
    self.rounds = {name: np.asarray(t) for name, t in rounds.items()}

  def __getitem__(self, name) -> float:
    """The median time of a candidate."""
    return float(np.median(self.rounds[name]))

  def ratio(self, a, b) -> float:
    """The median over rounds of time(a) / time(b): a round's two calls ran under the same
    load, so their ratio drifts less than the ratio of the medians."""
    return float(np.median(self.rounds[a] / self.rounds[b]))


def interleaved(candidates: dict[Any, Callable[[], None]], reps: int,
                warmup: int = 1) -> Timings:
  """Calls the candidates in alternation `reps` times, after `warmup` calls each."""
  for fn in candidates.values():
    for _ in range(warmup):  # Compilation, caches, allocator pools.
      fn()
  rounds = {name: [] for name in candidates}
  for _ in range(reps):
    for name, fn in candidates.items():
      rounds[name].append(_seconds(fn))
  return Timings(rounds)


def budgeted(candidates: dict[Any, Callable[[], None]], sizes: Sizes) -> Timings:
  """`interleaved`, with as many repetitions as fit in the profile's budget."""
  for fn in candidates.values():
    fn()  # Warm-up.
  one_round = sum(_seconds(fn) for fn in candidates.values())
  reps = int(np.clip(sizes.budget_s / max(one_round, 1e-9), sizes.min_reps, sizes.max_reps))
  return interleaved(candidates, reps, warmup=0)


def matmul_probe(n: int) -> tuple[Callable[[], None], int]:
  """A large float32 jnp.dot (the machine's matmul rate) and its FLOPs."""
  x, y = (jax.random.normal(k, (n, n), jnp.float32) for k in jax.random.split(
      jax.random.key(0), 2))
  dot = jax.jit(jnp.dot)
  return jax_call(lambda: dot(x, y)), 2 * n ** 3


def products_probe(batch: int) -> tuple[Callable[[], None], int]:
  """The matrix products of a train step on `batch` clips (flops.products: forward and
  backward, at their shapes) on random operands, and nothing else, and their FLOPs: the time
  of a step whose every other operation were free."""
  shapes = flops.products(clips=batch)
  keys = jax.random.split(jax.random.key(0), 2 * len(shapes))
  operands = [(jax.random.normal(keys[2 * i], (p.batch, p.m, p.k)),
               jax.random.normal(keys[2 * i + 1], (p.batch, p.k, p.n)))
              for i, p in enumerate(shapes)]
  run = jax.jit(lambda ops: [jnp.matmul(a, b) for a, b in ops])
  return jax_call(lambda: run(operands)), sum(p.flops for p in shapes)


# Rows, targets and reasons.


def row(section: str, name: str, *, jax_s=None, torch_s=None, speedup=None, clips=None,
        flop=None, peak_fraction=None, note: str = '') -> dict:
  """One table row. jax_s / torch_s: seconds; speedup: PyTorch's time over JAX's; clips:
  clips processed in jax_s; flop: FLOPs of the JAX computation; peak_fraction: its FLOP rate
  over the matmul rate measured alongside."""
  return {'section': section, 'benchmark': name, 'jax_s': jax_s, 'torch_s': torch_s,
          'speedup': speedup, 'clips_per_s': clips / jax_s if clips and jax_s else None,
          'gflop_per_s': flop / jax_s / 1e9 if flop and jax_s else None,
          'peak_fraction': peak_fraction, 'note': note}


def target(key: str, measured: float, met: bool, shown: str, reason: str) -> dict:
  """A target's outcome; `reason` is what the run measured behind it, shown if missed."""
  name, limit, applies = TARGETS[key]
  return {'key': key, 'target': name, 'limit': limit, 'measured': measured, 'shown': shown,
          'met': bool(met), 'applies': list(applies), 'reason': reason}


def format_profile(profile: dict[str, float]) -> str:
  if not profile:
    return 'no profile in this run'
  return ', '.join(f'{name} {share:.0%}' for name, share in profile.items())


def _findings(profile: dict[str, float]) -> str:
  found = [f'{FINDINGS[c]} ({profile[c]:.0%})' for c in FINDINGS if profile.get(c, 0) >= 0.1]
  return ('; ' + '; '.join(found)) if found else ''


def step_reason(jax_fraction: float, torch_fraction: float, flop_ratio: float,
                profile: dict[str, float], products: dict) -> str:
  """Why the train-step speed-up is what it is: FLOPs saved times relative efficiency, and
  the most a step could gain that did nothing but its matrix products (`products`: that
  row)."""
  return (f'both sides are compute-bound (JAX at {jax_fraction:.0%}, PyTorch at '
          f'{torch_fraction:.0%} of the matmul rate); JAX does {flop_ratio:.2f}x fewer FLOPs '
          f'(fc_v on segment means), so its speed-up is {flop_ratio:.2f} x '
          f'{jax_fraction / torch_fraction:.2f} (relative efficiency); '
          f'{_ceiling(products)}; JAX step profile: {format_profile(profile)}'
          f'{_findings(profile)}')


def _products_rate(products: dict) -> str:
  return (f'its matrix products alone run at {products["peak_fraction"]:.0%} of the matmul '
          f'rate at their shapes')


def _ceiling(products: dict) -> str:
  return (f'{_products_rate(products)}, so even a step with no other work would be only '
          f'{products["speedup"]:.2f}x PyTorch\'s')


def peak_reason(profile: dict[str, float], products: dict) -> str:
  """Why the train step does not run at the matmul rate: its products' shapes (`products`:
  their row) and its time outside matrix products."""
  return (f'{_products_rate(products)}; JAX step profile: {format_profile(profile)}'
          f'{_findings(profile)}')


def epoch_reason(jax_step_s: float, jax_epoch_step_s: float, torch_step_s: float,
                 torch_epoch_step_s: float, products_s: float) -> str:
  """Splits the epoch ratio into the train step's ratio and what the epoch adds per step, and
  bounds it by a step of nothing but matrix products (`products_s`, at the same batch). All
  median times, so that the split is exact."""
  jax_factor, torch_factor = jax_epoch_step_s / jax_step_s, torch_epoch_step_s / torch_step_s
  return (f'an epoch step takes {jax_factor:.2f}x a bare train step in JAX and '
          f'{torch_factor:.2f}x in PyTorch (the DataLoader\'s share), so the epoch ratio in '
          f'median times, {torch_epoch_step_s / jax_epoch_step_s:.2f}x, is the train step\'s '
          f'({torch_step_s / jax_step_s:.2f}x) times {torch_factor / jax_factor:.2f}; epochs of '
          f'steps that did nothing but their matrix products would be '
          f'{torch_epoch_step_s / products_s:.2f}x PyTorch\'s')


def refine_reason(flop_ratio: float) -> str:
  return (f'per clip, K = 16 does {flop_ratio:.2f}x the FLOPs of K = 1 (the vmap over partners '
          "shares only the embedding of the clip's own tracks)")


def eval_reason(forward_s: float, metrics_s: float) -> str:
  return f'forward pass {forward_s:.3f} s, metrics {metrics_s:.3f} s'


# Sections.


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
      t = budgeted({'jax': jax_call(jax_fn), 'torch': torch_call(torch_fn)}, sizes)
      rows.append(row('attention', f'hybrid-attention layer {name}, batch {batch}',
                      jax_s=t['jax'], torch_s=t['torch'], speedup=t.ratio('torch', 'jax'),
                      clips=batch, flop=flop))
  return rows, []


class _JaxTrainer:
  """The library's jitted train_steps on the device-resident split, holding the state (the
  call donates it)."""

  def __init__(self, ctx: dict, split: Split, targets: dict[str, np.ndarray]):
    config = ctx['config']
    self.model = HAN.from_config(config.model)
    mesh = train.make_mesh()
    self.steps_per_call = config.train.steps_per_call
    self.schedule, tx, self.train_steps = train.make_training(
        self.model, ml_collections.FrozenConfigDict(config.train),
        ml_collections.FrozenConfigDict(config.loss), len(split), mesh)
    self.key = jax.random.key(0, impl=train.RNG_IMPL)
    # From the shared parameters, copied: the step donates them.
    state = train.train_state(jax.tree.map(jnp.copy, _init_params(self.model)), tx)
    # Placed as the step returns it (as train.train_stage does): else its second call
    # compiles again, for the new placement.
    self.state = jax.device_put(state, NamedSharding(mesh, P()))
    self.data = train.device_arrays(split, targets, mesh)
    self.calls = 0

  def _next_key(self):
    self.calls += 1
    return jax.random.fold_in(self.key, self.calls)

  def indices(self, batch: int) -> jax.Array:
    """The clips of one step, (1, batch): one row of train_steps."""
    return (jnp.arange(batch) % self.data['audio'].shape[0])[None]

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
  host = _first({**{k: getattr(b.split, k) for k in train.INPUTS}, **b.targets}, batch)
  frames = _torch_batch({**host, 'video_2d': torch_han.to_frames(host['video_2d'])}, b.device)
  products, products_flop = products_probe(batch)
  candidates = {'jax': jax_call(lambda: b.trainer.step(idx)),
                'torch': torch_call(lambda: b.torch_step(frames)), 'matmul': b.matmul,
                'products': products}
  if batch == BATCH:  # How much of the gap is fc_v on 80 frames rather than 10.
    means = _torch_batch(host, b.device)
    candidates['torch_means'] = torch_call(lambda: b.torch_step(means))
  t = budgeted(candidates, b.sizes)
  peak = b.matmul_flop / t['matmul']
  torch_fraction = batch * per_clip_frames / b.matmul_flop * t.ratio('matmul', 'torch')
  r = row('train', f'train step, batch {batch}', jax_s=t['jax'], torch_s=t['torch'],
          speedup=t.ratio('torch', 'jax'), clips=batch, flop=batch * per_clip,
          peak_fraction=batch * per_clip / b.matmul_flop * t.ratio('matmul', 'jax'),
          note=f'matmul rate {peak / 1e9:.1f} GFLOP/s; PyTorch at 80 frames: '
               f'{batch * per_clip_frames / t["torch"] / 1e9:.1f} GFLOP/s, '
               f'{torch_fraction:.0%} of the rate')
  ceiling = row('train', f'{PRODUCTS_ROW}, batch {batch}', jax_s=t['products'],
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
          row('train', f'train step, batch {batch}, PyTorch on segment means',
              jax_s=t['jax'], torch_s=t['torch_means'],
              speedup=t.ratio('torch_means', 'jax'),
              note='diagnostic: PyTorch with fc_v on the 10 segment means')]
  profile = {}
  if b.sizes.profile_calls:
    profile = profiling.breakdown(jax_call(lambda: b.trainer.step(idx)), b.trainer.hlo(idx),
                                  b.sizes.profile_calls)
    rows.append(row('train', f'train step profile, batch {batch} (JAX)',
                    note=f'share of op time: {format_profile(profile)}'))
  return rows, [
      target('step_vs_torch', r['speedup'], r['speedup'] >= 2, f'{r["speedup"]:.2f}x',
             step_reason(r['peak_fraction'], torch_fraction, per_clip_frames / per_clip,
                         profile, ceiling)),
      target('step_vs_peak', r['peak_fraction'], r['peak_fraction'] >= 0.6,
             f'{r["peak_fraction"]:.0%}',
             peak_reason(profile, ceiling))]


def _train_epoch(b: _TrainBench, step_row: dict, products_row: dict) -> tuple[list, list]:
  """The LLP epoch: train.train_epoch against a PyTorch loop over a DataLoader; the rows of
  the train step and of its products alone at BATCH explain the ratio."""
  loader = torch.utils.data.DataLoader(
      torch_han.ClipDataset(b.split.audio, b.split.video_2d, b.split.video_3d, b.targets),
      batch_size=BATCH, shuffle=True, num_workers=b.sizes.loader_workers,
      pin_memory=b.device.type == 'cuda', persistent_workers=b.sizes.loader_workers > 0)
  steps = b.trainer.data['audio'].shape[0] // BATCH
  t = interleaved({'jax': jax_call(b.trainer.epoch),
                   'torch': torch_call(lambda: torch_han.train_epoch(b.torch_step, loader,
                                                                     b.device, steps)),
                   'matmul': b.matmul}, b.sizes.slow_reps)
  epoch_steps = -(-LLP_TRAIN_CLIPS // BATCH)
  scale = epoch_steps / steps  # Extrapolation from the steps timed to the whole epoch.
  per_clip = flops.per_clip()
  timed = 'whole epoch timed' if steps == epoch_steps else (
      f'{steps} of {epoch_steps} steps timed, extrapolated')
  r = row('train', f'epoch, {LLP_TRAIN_CLIPS:,} clips, batch {BATCH}', jax_s=t['jax'] * scale,
          torch_s=t['torch'] * scale, speedup=t.ratio('torch', 'jax'), clips=LLP_TRAIN_CLIPS,
          flop=LLP_TRAIN_CLIPS * per_clip,
          peak_fraction=steps * BATCH * per_clip / b.matmul_flop * t.ratio('matmul', 'jax'),
          note=f'{timed}; JAX: train.train_epoch over those steps\' {steps * BATCH:,} clips, '
               f'device-resident; PyTorch: DataLoader over the {len(b.split):,} per-clip '
               f'arrays, {b.sizes.loader_workers} workers')
  reason = epoch_reason(step_row['jax_s'], t['jax'] / steps,
                        step_row['torch_s'], t['torch'] / steps, products_row['jax_s'])
  return [r], [target('epoch_vs_torch', r['speedup'], r['speedup'] >= 3,
                      f'{r["speedup"]:.2f}x ({r["jax_s"]:.1f} s vs {r["torch_s"]:.1f} s)',
                      reason)]


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
    rows.append(row('refine', f'stage 2 track swap, K = {k}', jax_s=t[k],
                    clips=sizes.refine_clips,
                    note=f'per clip {t[k] / sizes.refine_clips / base:.2f}x K = 1 (FLOPs: '
                         f'{refine_flop_ratio(k):.2f}x); {sizes.refine_clips:,} clips, '
                         f'{sizes.refine_pairs_per_batch} pairs per batch'))
  k = sizes.partners[-1]
  ratio = t.ratio(k, 1)
  return rows, [target('refine_k16', ratio, ratio < k, f'{ratio:.2f}x (K = {k})',
                       refine_reason(refine_flop_ratio(k)))]


def bench_eval(ctx: dict) -> tuple[list, list]:
  """Evaluation of a test-sized split: forward, metrics, and the plain per-clip loop."""
  from tests import test_metrics  # pylint: disable=g-import-not-at-top  # Needs pytest.
  plain_loop = test_metrics._ref_evaluate  # pylint: disable=protected-access
  sizes = ctx['sizes']
  model = HAN.from_config(ctx['config'].model)
  split = _split(sizes.eval_clips, 'test')
  params = _init_params(model)
  out = train.predict(model, params, split, sizes.eval_batch)

  def metrics_only():
    pred_a, pred_v = metrics.segment_predictions(out['frame_prob'], out['a_prob'],
                                                 out['v_prob'])
    return metrics.evaluate(pred_a, pred_v, split.gt_a, split.gt_v)

  t = budgeted({'forward': lambda: train.predict(model, params, split, sizes.eval_batch),
                'evaluate': lambda: train.evaluate_split(model, params, split, sizes.eval_batch),
                'metrics': metrics_only}, sizes)
  preds = metrics.segment_predictions(out['frame_prob'], out['a_prob'], out['v_prob'])
  loop = interleaved({'loop': lambda: plain_loop(*preds, split.gt_a, split.gt_v)},
                     sizes.slow_reps, warmup=0)['loop']
  vectorised, plain = metrics_only(), plain_loop(*preds, split.gt_a, split.gt_v)
  same = all(abs(vectorised[k] - plain[k]) < 1e-9 for k in plain)
  n = sizes.eval_clips
  overhead = t.ratio('evaluate', 'forward')
  rows = [
      row('eval', f'forward pass, {n:,} clips (train.predict)', jax_s=t['forward'], clips=n,
          flop=n * flops.total(flops.han(contrastive=False)).forward),
      row('eval', f'forward + metrics, {n:,} clips (train.evaluate_split)', jax_s=t['evaluate'],
          clips=n, note=f'{overhead:.2f}x the forward pass'),
      row('eval', f'metrics, {n:,} clips (vectorised)', jax_s=t['metrics'], clips=n,
          note='predictions to the ten numbers'),
      row('eval', f'metrics, {n:,} clips (plain per-clip loop of the tests)', jax_s=loop,
          clips=n, note=f'{loop / t["metrics"]:.0f}x the vectorised time; same ten numbers: '
                        f'{"yes" if same else "NO"}'),
  ]
  reason = eval_reason(t['forward'], t['metrics'])
  return rows, [
      target('metrics_time', t['metrics'], t['metrics'] < 0.5, f'{t["metrics"]:.3f} s', reason),
      target('eval_overhead', overhead, overhead <= 1.5, f'{overhead:.2f}x', reason),
  ]


BENCHES = {'attention': bench_attention, 'train': bench_train, 'refine': bench_refine,
           'eval': bench_eval}


# The machine and the report.


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine() -> dict:
  return {'backend': jax.default_backend(), 'device': jax.devices()[0].device_kind,
          'devices': jax.device_count(), 'cpu': _cpu_model(), 'cores': os.cpu_count(),
          'jax': jax.__version__, 'torch': torch.__version__,
          'torch_device': 'cuda' if torch.cuda.is_available() else 'cpu',
          'python': platform.python_version(),
          'load_average': [round(x, 2) for x in os.getloadavg()]}


def _fmt_time(s) -> str:
  if s is None:
    return ''
  return f'{s * 1e3:.2f} ms' if s < 1 else f'{s:.2f} s'


def _fmt(x, spec: str, suffix: str = '') -> str:
  return '' if x is None else format(x, spec) + suffix


def status(t: dict, backend: str, profile: str) -> str:
  if profile == 'quick':
    return 'not judged (quick sizes)'
  if backend not in t['applies']:
    return f'not judged on {backend}'
  return 'met' if t['met'] else f'MISSED: {t["reason"]}'


def format_report(report: dict) -> str:
  """The tables of a run, in Markdown."""
  m = report['machine']
  lines = [
      f'- Machine: CPU {m["cpu"]}, {m["cores"]} cores; JAX {m["jax"]} on {m["backend"]} '
      f'({m["devices"]} x {m["device"]}); PyTorch {m["torch"]} on {m["torch_device"]}.',
      f'- Run: {report["date"]}, profile {report["profile"]}, {report["seconds"]:.0f} s; load '
      f'average {m["load_average"][0]} at the start (every figure is a ratio within the run; '
      f'times are medians, speed-ups and fractions of the matmul rate are medians of per-round '
      f'ratios, so they can differ from ratios of the times shown).',
      f'- Analytic count (benchmarks/flops.py, per layer): '
      f'{report["flops"]["per_clip_gflop"]:.3f} GFLOP per clip forward + backward; '
      f'{report["flops"]["per_clip_frames_gflop"]:.3f} with fc_v on 80 frames, as PyTorch runs '
      'it.',
      '',
      '| benchmark | JAX | PyTorch | JAX speed-up | clips/s (JAX) | GFLOP/s (JAX) '
      '| of matmul rate | note |',
      '|---|---|---|---|---|---|---|---|',
  ]
  for r in report['rows']:
    lines.append(
        f'| {r["benchmark"]} | {_fmt_time(r["jax_s"])} | {_fmt_time(r["torch_s"])} '
        f'| {_fmt(r["speedup"], ".2f", "x")} | {_fmt(r["clips_per_s"], ",.0f")} '
        f'| {_fmt(r["gflop_per_s"], ".1f")} | {_fmt(r["peak_fraction"], ".0%")} '
        f'| {r["note"]} |')
  if report['targets']:
    lines += ['', '| target | limit | measured | status |', '|---|---|---|---|']
    for t in report['targets']:
      lines.append(f'| {t["target"]} | {t["limit"]} | {t["shown"]} '
                   f'| {status(t, m["backend"], report["profile"])} |')
  return '\n'.join(lines)


def write_results(path: str, report: dict) -> None:
  """Replaces this backend's block inside the performance markers of `path`.

  The rest of the file (another engineer's tables) and other backends' blocks are kept.
  """
  blocks = {}
  for chunk in markdown.read_section(path, MARKERS).split('<!-- performance:block ')[1:]:
    name, body = chunk.split(' -->', 1)
    blocks[name] = body.strip('\n')
  m = report['machine']
  device = f'{m["cpu"]}, {m["cores"]} cores' if m['backend'] == 'cpu' else m['device']
  blocks[m['backend']] = f'### Performance on {m["backend"]}: {device}\n\n' + format_report(report)
  body = '\n\n'.join(f'{BLOCK.format(name)}\n{blocks[name]}' for name in sorted(blocks))
  markdown.replace_section(path, body, MARKERS, '## Performance')


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true',
                      help='toy sizes, every section in seconds (figures mean nothing)')
  parser.add_argument('--profile', choices=sorted(PROFILES),
                      help='sizes; default: quick with --quick, else cpu or accelerator by '
                           'the JAX backend')
  parser.add_argument('--sections', default=','.join(SECTIONS),
                      help=f'comma-separated, of {",".join(SECTIONS)}')
  parser.add_argument('--json', help='where the JSON goes (default for full runs: '
                                     'benchmarks/results_<backend>.json)')
  parser.add_argument('--results', help='the Markdown file whose performance section is '
                                        'rewritten (default for full runs: '
                                        'benchmarks/RESULTS.md)')
  args = parser.parse_args(argv)
  args.sections = [s for s in args.sections.split(',') if s]
  unknown = set(args.sections) - set(SECTIONS)
  if unknown:
    parser.error(f'unknown sections {sorted(unknown)}; choose from {SECTIONS}')
  if args.profile is None:
    args.profile = 'quick' if args.quick else (
        'cpu' if jax.default_backend() == 'cpu' else 'accelerator')
  if args.profile != 'quick':
    here = os.path.dirname(os.path.abspath(__file__))
    args.json = args.json or os.path.join(here, f'results_{jax.default_backend()}.json')
    args.results = args.results or os.path.join(here, 'RESULTS.md')
  return args


def main(argv=None) -> dict:
  """Runs the suite; returns the report (what the JSON holds)."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  start = time.perf_counter()
  # TF32 for float32 matrix products, as JAX's default precision gives on recent GPUs.
  torch.set_float32_matmul_precision('high')
  ctx = {'sizes': PROFILES[args.profile], 'config': ma.get_config(),
         'torch_device': torch.device('cuda' if torch.cuda.is_available() else 'cpu')}
  report = {'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
            'profile': args.profile, 'machine': machine(),
            'sizes': dataclasses.asdict(ctx['sizes']),
            'flops': {'per_clip_gflop': flops.per_clip() / 1e9,
                      'per_clip_frames_gflop': flops.per_clip(frames_2d=80) / 1e9},
            'rows': [], 'targets': []}
  for section in args.sections:
    section_start = time.perf_counter()
    rows, results = BENCHES[section](ctx)
    report['rows'] += rows
    report['targets'] += results
    print(f'[{section}] {time.perf_counter() - section_start:.0f} s', file=sys.stderr,
          flush=True)
  report['seconds'] = time.perf_counter() - start
  print(format_report(report))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(report, f, indent=2)
      f.write('\n')
  if args.results:
    write_results(args.results, report)
  return report


if __name__ == '__main__':
  main()
