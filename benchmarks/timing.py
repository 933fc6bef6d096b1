"""How the benchmarks time: candidates called in alternation, medians and per-round ratios.

The candidates of a comparison (JAX, PyTorch, a probe of the machine's matmul rate) are
called in turn, round after round, so that load from other processes falls on all of them
alike; each candidate's median is its time, and a ratio is the median of the per-round ratios.
"""

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import flops


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


def budgeted(candidates: dict[Any, Callable[[], None]], budget_s: float, min_reps: int,
             max_reps: int) -> Timings:
  """`interleaved`, with as many repetitions as fit in `budget_s` seconds, within
  [min_reps, max_reps]."""
  for fn in candidates.values():
    fn()  # Warm-up.
  one_round = sum(_seconds(fn) for fn in candidates.values())
  reps = int(np.clip(budget_s / max(one_round, 1e-9), min_reps, max_reps))
  return interleaved(candidates, reps, warmup=0)


def matmul_probe(n: int) -> tuple[Callable[[], None], int]:
  """A large float32 jnp.dot, (n, n) @ (n, n): the machine's matmul rate; and its FLOPs."""
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
