"""The report of a run: its rows and targets, the machine, the Markdown tables, the files.

A report is a dict: date, profile, machine, sizes, flops, rows, targets and seconds; it is what
the JSON holds and what the performance section of benchmarks/RESULTS.md is rendered from.
"""

import json
import os
import platform

import jax
import torch

from avvp_jax import workdir
from benchmarks import markdown

MARKERS = ('<!-- performance:start -->', '<!-- performance:end -->')
BLOCK = '<!-- performance:block {} -->'

# The issue's targets: (what, limit, backends where it is judged).
TARGETS = {
    'step_vs_torch': ('train step at batch 16: JAX vs PyTorch', '>= 2x', ('cpu',)),
    'step_vs_peak': ('train step at batch 16: fraction of the matmul rate', '>= 70 %',
                     ('cpu',)),
    'epoch_vs_torch': ('epoch: JAX vs PyTorch DataLoader', '>= 3x', ('cpu', 'gpu', 'tpu')),
    'metrics_time': ('metrics, predictions to the ten numbers, 1,200 clips', '< 0.5 s',
                     ('cpu', 'gpu', 'tpu')),
    'eval_overhead': ('forward + metrics vs forward alone, 1,200 clips', '<= 1.5x',
                      ('cpu', 'gpu', 'tpu')),
    'refine_k16': ('stage 2 per clip: K = 16 vs K = 1', '< 16x', ('cpu', 'gpu', 'tpu')),
    'seeds_8': ('8 models in one program vs one model, wall time', '<= 2x', ('gpu', 'tpu')),
    'phases_overhead': ('main command, cold cache: all but the training epochs', '<= 15 %',
                        ('cpu', 'gpu', 'tpu')),
    'pipeline_vs_torch': ('three MA stages: JAX vs the PyTorch port in the reference\'s loop',
                          '>= 4x', ('cpu', 'gpu', 'tpu')),
    # Host memory: on an accelerator the features live in the device's memory instead.
    'memory_peak': ('main command: peak resident memory, largest split',
                    '<= 1.5x features + 1.5 GB', ('cpu',)),
}


def result_row(section: str, name: str, *, jax_s=None, torch_s=None, speedup=None, clips=None,
               flop=None, peak_fraction=None, note: str = '') -> dict:
  """One table row. jax_s / torch_s: seconds; speedup: PyTorch's time over JAX's; clips:
  clips processed in jax_s; flop: FLOPs of the JAX computation; peak_fraction: its FLOP rate
  over the matmul rate measured alongside."""
  return {'section': section, 'benchmark': name, 'jax_s': jax_s, 'torch_s': torch_s,
          'speedup': speedup, 'clips_per_s': clips / jax_s if clips and jax_s else None,
          'gflop_per_s': flop / jax_s / 1e9 if flop and jax_s else None,
          'peak_fraction': peak_fraction, 'note': note}


def target(key: str, measured: float, met: bool, shown: str,
           figures: dict[str, float]) -> dict:
  """A target's outcome. `figures`: the measured numbers behind it, by name (fractions as
  fractions, times in seconds, ratios as ratios); shown with the status of a missed target."""
  name, limit, applies = TARGETS[key]
  return {'key': key, 'target': name, 'limit': limit, 'measured': measured, 'shown': shown,
          'met': bool(met), 'applies': list(applies),
          'figures': {k: float(v) for k, v in figures.items()}}


def format_figures(figures: dict[str, float]) -> str:
  return ', '.join(f'{name} = {value:.3g}' for name, value in figures.items())


def format_profile(profile: dict[str, float]) -> str:
  if not profile:
    return 'no profile in this run'
  return ', '.join(f'{name} {share:.0%}' for name, share in profile.items())


def status(t: dict, backend: str, profile: str) -> str:
  if profile == 'quick':
    return 'not judged (quick sizes)'
  if backend not in t['applies']:
    return f'not judged on {backend}'
  return 'met' if t['met'] else f'MISSED: {format_figures(t["figures"])}'


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


def write_json(path: str, report: dict) -> None:
  workdir.atomic_write(path, json.dumps(report, indent=2) + '\n')


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
