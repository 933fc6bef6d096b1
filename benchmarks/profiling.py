"""Where a jitted step spends its time, from a jax.profiler trace of the compiled program.

The trace's events are named after the HLO instructions that ran; the compiled HLO text says
what each one computes (its `op_name` metadata, the JAX operation it came from, and whether it
contains a matrix product). Each event's own time (without the events nested in it) goes to
one category, summed over threads or streams:

  matrix products     dots, alone or fused with their neighbours
  random bits         dropout masks (rng_bit_generator and its bit twiddling)
  backward (other)   elementwise and reductions of the backward pass
  forward (other)    the same in the forward pass (with the loss)
  update and gather   everything outside the differentiated function: the optimiser update,
                      the gather of the batch from the device-resident split
"""

import collections
import functools
import glob
import re
import tempfile
from typing import Callable

import jax

CATEGORIES = ('matrix products', 'random bits', 'backward (other)', 'forward (other)',
              'update and gather')
_COMPUTATION = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$')
_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT )?%?([\w.\-]+) = (?:\([^=]*?\)|\S+) ([\w\-]+)\((.*)$')
_CALLED = re.compile(
    r'(?:calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)')
_BRANCHES = re.compile(r'branch_computations=\{([^}]*)\}')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_RANDOM = ('rng_bit_generator', 'rng-bit-generator', 'threefry', 'random_bits', '_bernoulli')
_MATMUL_CALLS = ('matmul', 'gemm', 'onednn', 'cublas', 'dot')


def hlo_categories(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> category, from a compiled module's text."""
  instructions, body = {}, collections.defaultdict(list)
  computation = None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header and ' = ' not in line:
      computation = header.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, opcode, rest = m.groups()
    op_name = _OP_NAME.search(rest)
    target = re.search(r'custom_call_target="([^"]*)"', rest)
    called = _CALLED.findall(rest) + [
        c.strip().lstrip('%') for b in _BRANCHES.findall(rest) for c in b.split(',')]
    instructions[name] = (opcode, called, op_name.group(1) if op_name else '',
                          target.group(1).lower() if target else '')
    body[computation].append(name)

  @functools.cache
  def has_dot(name: str) -> bool:
    opcode, called, _, target = instructions[name]
    if opcode in ('dot', 'convolution') or any(k in target for k in _MATMUL_CALLS):
      return True
    return any(has_dot(i) for c in called for i in body[c])

  categories = {}
  for name, (_, _, op_name, _) in instructions.items():
    if any(k in op_name or k in name for k in _RANDOM):
      categories[name] = 'random bits'
    elif has_dot(name):
      categories[name] = 'matrix products'
    elif 'transpose(' in op_name:
      categories[name] = 'backward (other)'
    elif 'jvp(' in op_name:
      categories[name] = 'forward (other)'
    else:
      categories[name] = 'update and gather'
  return categories


def _self_times(events, categories: dict[str, str], totals: collections.Counter) -> None:
  """Adds each matched event's duration less that of the matched events nested in it."""
  matched = sorted((e for e in events if e.name in categories),
                   key=lambda e: (e.start_ns, -e.duration_ns))
  stack = []  # [end_ns, category, self time] of the enclosing events.
  for e in matched:
    while stack and stack[-1][0] <= e.start_ns:
      _, category, own = stack.pop()
      totals[category] += own
    if stack:
      stack[-1][2] -= e.duration_ns
    stack.append([e.start_ns + e.duration_ns, categories[e.name], e.duration_ns])
  for _, category, own in stack:
    totals[category] += own


def breakdown(fn: Callable[[], None], hlo_text: str, calls: int) -> dict[str, float]:
  """Fractions of the op time of `calls` calls of `fn` (which must wait for its result) per
  category; empty if the trace names no instruction of `hlo_text`."""
  categories = hlo_categories(hlo_text)
  options = jax.profiler.ProfileOptions()
  options.enable_hlo_proto = False  # Serialising every loaded program's HLO takes seconds.
  options.python_tracer_level = 0
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, profiler_options=options):
      for _ in range(calls):
        fn()
    files = glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True)
    data = jax.profiler.ProfileData.from_file(files[0])
  # Accelerators trace their ops on device planes; the host plane then holds only launches.
  device_planes = [p for p in data.planes if p.name.startswith('/device:')]
  totals = collections.Counter()
  for plane in device_planes or data.planes:
    for line in plane.lines:
      _self_times(line.events, categories, totals)
  busy = sum(totals.values())
  return {c: totals[c] / busy for c in CATEGORIES} if busy else {}
