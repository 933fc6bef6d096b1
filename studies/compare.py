"""The methods compared under one protocol (studies/methods.md), from finished workdirs.

  python studies/compare.py --root=/tmp/cmp/A

`--root` holds one workdir per method, named as in METHODS (made by the commands of
studies/methods.md with --config.num_seeds=3). Prints Markdown: the ten test numbers of each
method's tested stage as mean ± sd over its seeds; what its label cleaning or pseudo labels
got right against the training split's truth; and, for segment-level Type@AV and Visual F,
which method beats which by the plan's rule (a difference of the means above twice its
standard error).
"""

import itertools
import math
import os
import sys

import numpy as np
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top
from avvp_jax import checkpoints, logs, reports, workdir as wd
from avvp_jax.data import load_splits, pseudo_labels
from benchmarks import markdown

# workdir name: what the tables call it.
METHODS = {'han': 'HAN', 'ma': 'MA', 'jomold': 'JoMoLD', 'valor': 'VALOR',
           'valor_refine': 'VALOR + MA rule', 'jomold_no_denoise': 'JoMoLD, no denoising',
           'valor_refine_keep_global': 'VALOR + MA rule, clip target kept'}
NUMBERS = [f'{level}/{kind}' for level in ('segment', 'event')
           for kind in ('audio', 'visual', 'av', 'type', 'event')]
JUDGED = ('segment/type', 'segment/visual')

_ROOT = flags.DEFINE_string('root', None, 'The folder of the methods\' workdirs.')
flags.mark_flag_as_required('root')


def tested_report(workdir: str) -> dict | None:
  """The report of the run's last training stage, or None while it is not finished."""
  stage = 'final' if wd.load_config(workdir).refine.enabled else 'base'
  return reports.read_report(wd.stage_paths(workdir, stage)['report'])


def per_seed_values(report: dict, key: str) -> np.ndarray:
  return np.array([p['results'][key] for p in report['per_seed']])


def cleaning(workdir: str) -> str:
  """What the method's labels got right, mean over seeds: MA's drops, JoMoLD's drops in the
  last epoch, VALOR's pseudo labels."""
  config = wd.load_config(workdir)
  refined = checkpoints.load_refined(workdir)
  parts = []
  if config.loss.get('kind') == 'jomold':
    last = max(r.epoch for r in logs.read_metrics(workdir) if r.stage == 'final')
    records = [r for r in logs.read_metrics(workdir) if r.stage == 'final' and r.epoch == last]
    if 'drops/visual' not in records[0].train:
      return 'none (denoising off)'
    for m in ('audio', 'visual'):
      def mean(k):  # Over the seeds where it is defined (no drop: no precision).
        values = [r.train[f'drops/{m}{k}'] for r in records if f'drops/{m}{k}' in r.train]
        return f'{np.mean(values):.1f}' if values else 'n/a'
      parts.append(f'{m}: {mean("")} dropped in epoch {last} (mean over seeds), precision '
                   f'{mean("_precision")}, recall {mean("_recall")}')
  elif refined is not None:
    stats = refined['stats']
    for m in ('audio', 'visual'):
      fmt = lambda v: 'n/a' if v is None else f'{v:.1f}'
      parts.append(f'{m}: {stats[f"{m}/dropped"]:.0f} dropped, precision '
                   f'{fmt(stats[f"{m}/precision"])}, recall {fmt(stats[f"{m}/recall"])}')
  if config.loss.get('kind') == 'pseudo_labels':
    split = load_splits(config.data)['train']
    quality = pseudo_labels.quality(pseudo_labels.for_split(config.data, split), split)
    parts.insert(0, 'pseudo labels (segments): ' + ', '.join(
        f'{m} precision {quality[f"{m}/precision"]:.1f}, recall {quality[f"{m}/recall"]:.1f}'
        for m in ('audio', 'visual')))
  return '; '.join(parts) or 'none (weak labels only)'


def beats(x: np.ndarray, y: np.ndarray) -> bool:
  """The plan's rule: mean_x - mean_y > 2 sqrt((sd_x^2 + sd_y^2) / n)."""
  return x.mean() - y.mean() > 2 * math.sqrt((x.std() ** 2 + y.std() ** 2) / len(x))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  found = {name: os.path.join(_ROOT.value, name) for name in METHODS
           if os.path.exists(os.path.join(_ROOT.value, name, wd.CONFIG_FILE))}
  found = {name: w for name, w in found.items() if tested_report(w) is not None}
  rows = {name: tested_report(w) for name, w in found.items()}
  lines = markdown.header(['method', 'seeds', *NUMBERS])
  for name, report in rows.items():
    cells = [f'{report["results"][k]:.1f} ± {report["sd"][k] or 0.0:.1f}' for k in NUMBERS]
    lines.append(markdown.row([METHODS[name], len(report['seeds']), *cells]))
  lines += ['', *markdown.header(['method', 'labels against the truth'])]
  lines += [markdown.row([METHODS[name], cleaning(w)]) for name, w in found.items()]
  for key in JUDGED:
    lines += ['', f'{key}: who beats whom (rule of the plan)', '']
    for a, b in itertools.permutations(rows, 2):
      if beats(per_seed_values(rows[a], key), per_seed_values(rows[b], key)):
        lines.append(f'- {METHODS[a]} beats {METHODS[b]}')
    told = {frozenset(p) for p in itertools.permutations(rows, 2)
            if beats(*(per_seed_values(rows[m], key) for m in p))}
    apart = [f'{METHODS[a]} / {METHODS[b]}' for a, b in itertools.combinations(rows, 2)
             if frozenset((a, b)) not in told]
    if apart:
      lines.append('- not told apart: ' + ', '.join(apart))
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
