"""The paper's ablations (Tables 2, 3, 4) and the K-partner study, over seeds.

  python benchmarks/ablation.py [--seeds=0,1,2] [--tables=2,3,4,k] [--workdir=workdirs/ablation]

Every run is `configs/ma.py` (the main command's regime: built-in data, builtin schedule) with
the overrides of RUNS. Runs that differ only in stage 2 (`refine.*`) share one stage 1: it is
trained once and copied. Every run resumes where it stopped. Writes, per table, the mean ± sd
over seeds of the ten numbers and the refinement's statistics into benchmarks/RESULTS.md,
between the ablation markers.
"""

import json
import os
import shutil
import sys

import numpy as np
from absl import app, flags, logging

# The configs live beside the library, not in it: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from avvp_jax import metrics, pipeline, workdir as wd  # pylint: disable=g-import-not-at-top
from benchmarks import markdown  # pylint: disable=g-import-not-at-top
from configs import ma  # pylint: disable=g-import-not-at-top

MARKERS = ('<!-- ablation:start -->', '<!-- ablation:end -->')
# run name: (config argument, overrides, run whose stage 1 it shares or None)
RUNS = {
    'r': ('r', {}, None),
    'cr': ('cr', {}, None),
    'cr_audio': ('cr', {'refine.modalities': 'audio'}, 'cr'),
    'cr_visual': ('cr', {'refine.modalities': 'visual'}, 'cr'),
    'cr_tau0.1': ('cr', {'loss.tau': 0.1}, None),
    'cr_tau0.3': ('cr', {'loss.tau': 0.3}, None),
    'cr_tau0.4': ('cr', {'loss.tau': 0.4}, None),
    'cr_k4': ('cr', {'refine.num_partners': 4}, 'cr'),
    'cr_k16': ('cr', {'refine.num_partners': 16}, 'cr'),
}
# table: (title, rows of (label, run, stage whose test report is the row))
TABLES = {
    '2': ('Table 2: the components', (
        ('Baseline (HAN)', 'r', 'base'), ('+C', 'cr', 'base'),
        ('+R', 'r', 'final'), ('+C+R (MA)', 'cr', 'final'))),
    '3': ('Table 3: which modality is refined (MA)', (
        ('audio only', 'cr_audio', 'final'), ('visual only', 'cr_visual', 'final'),
        ('both', 'cr', 'final'))),
    '4': ('Table 4: the temperature tau (stage 1 is +C, stage 3 is MA)', tuple(
        (f'tau {tau}, {name}', 'cr' if tau == '0.2' else f'cr_tau{tau}', stage)
        for tau in ('0.1', '0.2', '0.3', '0.4')
        for name, stage in (('+C', 'base'), ('MA', 'final')))),
    'k': ('K partners per clip (MA)', (
        ('K = 1 (paper)', 'cr', 'final'), ('K = 4', 'cr_k4', 'final'),
        ('K = 16', 'cr_k16', 'final'))),
}
STAT_KEYS = ('audio/dropped', 'audio/precision', 'audio/recall',
             'visual/dropped', 'visual/precision', 'visual/recall',
             'audio/error_classes', 'visual/error_classes')


def make_config(run: str, seed: int):
  arg, overrides, _ = RUNS[run]
  config = ma.get_config(arg)
  config.seed = seed
  config.update_from_flattened_dict(overrides)
  return config


def run_pipeline(run: str, seed: int, workdir: str, shared_base: str | None) -> None:
  """Runs (or resumes) one pipeline, copying a shared stage 1 into a new workdir first."""
  if shared_base and not os.path.exists(workdir):
    os.makedirs(workdir)
    shutil.copytree(os.path.join(shared_base, 'base'), os.path.join(workdir, 'base'))
  print(f'=== seed {seed}: {run} -> {workdir}', flush=True)
  pipeline.run(make_config(run, seed), workdir)


def training_minutes(workdir: str) -> float:
  """The epochs this workdir trained itself (a copied stage 1 is not counted), in minutes."""
  return sum(r['seconds'] for r in wd.read_metrics(workdir)) / 60


def runs_of(tables: list[str]) -> list[str]:
  """The runs the tables need, each run after the one whose stage 1 it shares."""
  needed = {run for t in tables for _, run, _ in TABLES[t][1]}
  needed |= {RUNS[r][2] for r in needed if RUNS[r][2]}
  return [r for r in RUNS if r in needed]


def _report(workdir: str, stage: str) -> dict:
  with open(wd.stage_paths(workdir, stage)['report']) as f:
    return json.load(f)['results']


def table_section(title: str, rows, workdirs: list[dict[str, str]]) -> list[str]:
  """One table: the ten numbers per row, then the refinement statistics of its runs."""
  keys = [f'{level}/{key}' for level, _ in metrics.LEVELS for key, _ in metrics.COLUMNS]
  names = [f'{level} {name}' for level, _ in metrics.LEVELS for _, name in metrics.COLUMNS]
  lines = [f'### {title}', '', *markdown.header(['Variant'] + names)]
  for label, run, stage in rows:
    reports = [_report(w[run], stage) for w in workdirs]
    lines.append(markdown.row([label] + [markdown.mean_sd([r[k] for r in reports]) for k in keys]))
  refined = list(dict.fromkeys(run for _, run, stage in rows if stage == 'final'))
  if refined:
    lines += ['', 'Refinement of those runs on the train split, against its dense truth '
              '(precision and recall in %; error classes: of the 25 classes, those where the '
              'frozen stage-1 model errs on its training clips):', '',
              *markdown.header(('Run',) + STAT_KEYS)]
    for run in refined:
      stats = [wd.load_refined(w[run])['stats'] for w in workdirs]
      lines.append(markdown.row([run] + [markdown.mean_sd([s[k] for s in stats])
                                         for k in STAT_KEYS]))
  return lines


def summarise(tables: list[str], workdirs: list[dict[str, str]], seeds: list[str]) -> str:
  config = ma.get_config()
  d, tc = config.data.synthetic, config.train
  lines = [f'Built-in synthetic LLP: {d.num_train} train / {d.num_val} val / {d.num_test} test '
           f'clips; {tc.epochs} epochs per training stage, lr x0.1 every {tc.lr_decay_every}; '
           f'seeds {", ".join(seeds)} (mean ± sd over seeds; F in %, test split). '
           'Training time per seed (epochs and their validation, from metrics.jsonl; 2 CPU '
           'cores): ' + ', '.join(
               f'{run} {np.mean([training_minutes(w[run]) for w in workdirs]):.1f} min'
               for run in runs_of(tables)) + '.', '']
  for t in tables:
    lines += table_section(*TABLES[t], workdirs) + ['']
  return '\n'.join(lines).rstrip()


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  args = flags.FLAGS
  unknown = set(args.tables) - set(TABLES)
  if unknown:
    raise app.UsageError(f'Unknown tables {sorted(unknown)}; choose from {sorted(TABLES)}.')
  workdirs = []
  for seed in map(int, args.seeds):
    dirs = {}
    for run in runs_of(args.tables):
      dirs[run] = os.path.join(args.workdir, f'{run}_seed{seed}')
      shared = RUNS[run][2]
      run_pipeline(run, seed, dirs[run], dirs[shared] if shared else None)
    workdirs.append(dirs)
  body = summarise(args.tables, workdirs, args.seeds)
  print(body)
  markdown.replace_section(args.results, body, MARKERS, '## Ablations')


if __name__ == '__main__':
  # Defined here, not on import: tests and regime.py import this module's tables.
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Model seeds (the data set is fixed).')
  flags.DEFINE_list('tables', ['2', '3', '4', 'k'], 'Which tables to run.')
  flags.DEFINE_string('workdir', 'workdirs/ablation', 'Where the runs go.')
  flags.DEFINE_string('results', os.path.join(os.path.dirname(__file__), 'RESULTS.md'),
                      'The Markdown file whose ablation section is rewritten.')
  app.run(main)
