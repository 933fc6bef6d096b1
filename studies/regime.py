"""Regime map: where the refinement of MA works on the built-in data, and where it stops.

  python studies/regime.py [--seeds=0] [--sizes=500,1000,2000] [--workdir=workdirs/regime]

MA (`configs/ma.py:cr`) for every training-split size x stage-1 schedule x `base_selection`
(stage 3 uses the same schedule, as in the method). The `best_val` cell reuses the stage 1 of
its `last` cell. Writes a table into studies/regime.md between the regime markers and the
figure studies/regime.png.
"""

import json
import os
import shutil
import sys

import numpy as np
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from avvp_jax import checkpoints, metrics, pipeline  # pylint: disable=g-import-not-at-top
from avvp_jax import workdir as wd  # pylint: disable=g-import-not-at-top
from benchmarks import markdown  # pylint: disable=g-import-not-at-top
from configs import ma  # pylint: disable=g-import-not-at-top

MARKERS = ('<!-- regime:start -->', '<!-- regime:end -->')
# (label, epochs per stage, lr_decay_every): short to the paper's.
SCHEDULES = (('4, step 2', 4, 2), ('8, step 3 (builtin)', 8, 3),
             ('12, step 10 (reference)', 12, 10), ('40, step 10 (paper)', 40, 10))
SELECTIONS = ('last', 'best_val')
# The refinement statistics of a cell (refine.refinement_stats, refine.base_error_stats).
STATS = ('visual/dropped', 'visual/precision', 'visual/recall', 'audio/dropped',
         'audio/precision', 'audio/recall', 'visual/error_classes', 'audio/error_classes')


def cell_config(size: int, epochs: int, step: int, selection: str, seed: int):
  config = ma.get_config('cr')
  config.seed = seed
  config.update_from_flattened_dict({
      'data.synthetic.num_train': size, 'train.epochs': epochs, 'train.lr_decay_every': step,
      'train.base_selection': selection})
  return config


def cell_dir(root: str, size: int, epochs: int, step: int, selection: str, seed: int) -> str:
  return os.path.join(root, f'n{size}_e{epochs}s{step}_{selection}_seed{seed}')


def run_cell(size: int, epochs: int, step: int, selection: str, seed: int, root: str) -> str:
  """Runs (or resumes) one cell under `root`; returns its workdir."""
  name = lambda sel: cell_dir(root, size, epochs, step, sel, seed)
  workdir, config = name(selection), cell_config(size, epochs, step, selection, seed)
  if not os.path.exists(workdir) and selection != 'last':  # Stage 1 ignores base_selection.
    os.makedirs(workdir)
    shutil.copytree(os.path.join(name('last'), 'base'), os.path.join(workdir, 'base'))
  print(f'=== {workdir}', flush=True)
  pipeline.run(config, workdir)
  return workdir


def cell_numbers(workdir: str) -> dict:
  """Refinement statistics, stage-1 and stage-3 test numbers, and the random-drop precision."""
  stats = checkpoints.load_refined(workdir)['stats']
  reports = {}
  for stage in ('base', 'final'):
    with open(wd.stage_paths(workdir, stage)['report']) as f:
      reports[stage] = json.load(f)['results']
  out = {k: stats[k] for k in STATS}
  out['base best_val epoch'] = checkpoints.checkpoint_epoch(workdir, 'base', 'best_val')
  out['visual/random_precision'] = 100 * stats['visual/absent'] / stats['labels']
  for key in ('segment/visual', 'segment/type'):
    out[f'base {key}'] = reports['base'][key]
    out[f'gain {key}'] = reports['final'][key] - reports['base'][key]
  return out


def gather(cells: dict) -> dict:
  """{(size, schedule label, selection): [numbers per seed]} -> {...: {key: [values]}}."""
  return {cell: {k: [n[k] for n in per_seed] for k in per_seed[0]}
          for cell, per_seed in cells.items()}


def table(numbers: dict) -> str:
  columns = (('base best_val epoch',) + STATS + (
      'visual/random_precision', 'base segment/visual', 'gain segment/visual',
      'base segment/type', 'gain segment/type'))
  lines = markdown.header(('train clips', 'schedule', 'base selection') + columns)
  for (size, schedule, selection), values in numbers.items():
    lines.append(markdown.row([size, schedule, selection]
                              + [metrics.format_mean_sd(values[c]) for c in columns]))
  return '\n'.join(lines)


def _mean(values) -> float:
  defined = [v for v in values if v is not None]
  return float(np.mean(defined)) if defined else np.nan


def plot(numbers: dict, path: str) -> None:
  """Four panels over the stage-1 schedule: visual precision, recall, stage-3 gains."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  panels = (('visual/precision', 'visual drops: precision (%; no point: nothing dropped)'),
            ('visual/recall', 'visual drops: recall (%)'),
            ('gain segment/visual', 'stage 3 - stage 1: segment Visual F'),
            ('gain segment/type', 'stage 3 - stage 1: segment Type@AV'))
  sizes = sorted({size for size, _, _ in numbers})
  x = np.arange(len(SCHEDULES))
  fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
  axes = axes.ravel()
  colors = plt.get_cmap('viridis')(np.linspace(0, 0.85, len(sizes)))
  for ax, (key, title) in zip(axes, panels):
    for size, color in zip(sizes, colors):
      for selection, style, marker in zip(SELECTIONS, ('-', '--'), ('o', 's')):
        y = [_mean(numbers[(size, label, selection)][key])
             if (size, label, selection) in numbers else np.nan for label, _, _ in SCHEDULES]
        ax.plot(x, y, style, marker=marker, fillstyle='full' if selection == 'last' else 'none',
                markersize=7, color=color, label=f'{size} clips, {selection}')
      if key == 'visual/precision':
        chance = [_mean(numbers[(size, label, 'last')]['visual/random_precision'])
                  if (size, label, 'last') in numbers else np.nan for label, _, _ in SCHEDULES]
        ax.plot(x, chance, ':', color=color, label=f'{size} clips, random drops')
    if key.startswith('gain'):
      ax.axhline(0, color='grey', lw=0.8)
    ax.set_xticks(x, [label.replace(' (', '\n(') for label, _, _ in SCHEDULES], fontsize=8)
    ax.set_xlabel('epochs per stage, lr step')
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.suptitle('MA on the built-in data: refinement quality (train split) and stage-3 gain '
               '(test split)\nby schedule, training-split size and base selection', fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  args = flags.FLAGS
  cells, missing = {}, []
  for seed in map(int, args.seeds):
    for size in map(int, args.sizes):
      for label, epochs, step in SCHEDULES:
        for selection in SELECTIONS:
          if args.train:
            workdir = run_cell(size, epochs, step, selection, seed, args.workdir)
          else:
            workdir = cell_dir(args.workdir, size, epochs, step, selection, seed)
            if not os.path.exists(wd.stage_paths(workdir, 'final')['report']):
              missing.append(f'{size} clips, {label}, {selection}, seed {seed}')
              continue
          cells.setdefault((size, label, selection), []).append(cell_numbers(workdir))
  numbers = gather(cells)
  body = (f'MA (`:cr`), seeds {", ".join(args.seeds)}; every cell trains stage 1 and stage 3 '
          'with the schedule of its row; mean ± sd over seeds. Precision and recall of the '
          'drops in %, against the train split\'s dense truth; random precision: the share of '
          'weak labels that are truly invisible (what random visual drops would score); gains '
          'in points of test F. Figure: `studies/regime.png`.\n\n' + table(numbers))
  if missing:
    body += '\n\nNot run (no finished stage 3): ' + '; '.join(missing) + '.'
  print(body)
  plot(numbers, args.figure)
  markdown.replace_section(args.results, body, MARKERS, '## Regime map')


if __name__ == '__main__':
  # Defined here, not on import, as in ablation.py.
  flags.DEFINE_list('seeds', ['0'], 'Model seeds (the data set is fixed per size).')
  flags.DEFINE_list('sizes', ['500', '1000', '2000'], 'Training clips.')
  flags.DEFINE_string('workdir', 'workdirs/regime', 'Where the runs go.')
  flags.DEFINE_string('results', os.path.join(os.path.dirname(__file__), 'regime.md'),
                      'The Markdown file whose regime section is rewritten.')
  flags.DEFINE_bool('train', True, 'Train the cells that are not finished; with --notrain, '
                    'only tabulate the finished ones and list the others as not run.')
  flags.DEFINE_string('figure', os.path.join(os.path.dirname(__file__), 'regime.png'),
                      'Where the figure goes.')
  app.run(main)
