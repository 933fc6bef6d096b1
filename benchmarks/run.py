"""The benchmark suite of avvp-jax: speed is measured, not assumed.

Usage:
  python benchmarks/run.py                        # whole suite, sized for the backend found
  python benchmarks/run.py --quick                # every section at toy sizes, for CI
  python benchmarks/run.py --sections train,eval  # some sections only

Prints one table, writes it as JSON (--json, default benchmarks/results_<backend>.json) and
into the performance section of benchmarks/RESULTS.md (--results), with the machine and the
date. A quick run writes only where --json / --results say.

Every figure is a ratio within one run (benchmarks/timing.py says how it is timed). This is
the command line; the sections are in benchmarks/sections.py, the tables and the files
written in benchmarks/report.py.
benchmarks/README.md says what each row means.
"""

import argparse
import dataclasses
import datetime
import os
import sys
import time

# libgomp's spinning barriers make PyTorch 2-10x slower, and erratic, where the cores are
# shared (other processes, or XLA's threads between calls); passive waiting gives PyTorch its
# best time. It must be set before torch loads its OpenMP runtime.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import jax  # pylint: disable=g-import-not-at-top
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python benchmarks/run.py` puts benchmarks/, not the root, first.
  sys.path.insert(0, ROOT)

from benchmarks import flops, sections  # pylint: disable=g-import-not-at-top
from benchmarks.report import format_report, machine, write_json, write_results
from configs import ma

SECTIONS = tuple(sections.BENCHES)


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true',
                      help='toy sizes, every section in seconds (figures mean nothing)')
  parser.add_argument('--profile', choices=sorted(sections.PROFILES),
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
  ctx = {'sizes': sections.PROFILES[args.profile], 'config': ma.get_config(),
         'torch_device': torch.device('cuda' if torch.cuda.is_available() else 'cpu')}
  report = {'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
            'profile': args.profile, 'machine': machine(),
            'sizes': dataclasses.asdict(ctx['sizes']),
            'flops': {'per_clip_gflop': flops.per_clip() / 1e9,
                      'per_clip_frames_gflop': flops.per_clip(frames_2d=80) / 1e9},
            'rows': [], 'targets': []}
  for section in args.sections:
    section_start = time.perf_counter()
    rows, results = sections.BENCHES[section](ctx)
    report['rows'] += rows
    report['targets'] += results
    print(f'[{section}] {time.perf_counter() - section_start:.0f} s', file=sys.stderr,
          flush=True)
  report['seconds'] = time.perf_counter() - start
  print(format_report(report))
  if args.json:
    write_json(args.json, report)
  if args.results:
    write_results(args.results, report)
  return report


if __name__ == '__main__':
  main()
