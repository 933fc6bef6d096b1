"""The paper's ablations (Tables 2, 3, 4), the K-partner study and the ensemble refinement,
over seeds.

  python studies/ablation.py [--num_seeds=3] [--seed=0] [--tables=2,3,4,k,e]
                                [--workdir=workdirs/ablation]

Every run is `configs/ma.py` (the main command's regime: built-in data, builtin schedule) with
the overrides of RUNS, and trains its `num_seeds` seeds (seed, seed + 1, ...) in one program
(`config.num_seeds`). Runs that differ only in stage 2 (`refine.*`) share one stage 1: it is
trained once and copied. Every run resumes where it stopped. Writes each table (the mean ± sd
over seeds of the ten numbers and of the refinement's statistics, and how long its runs
trained) into studies/ablations.md between that table's markers, leaving the other tables.
"""

import os
import shutil
import sys
import time

from absl import app, flags, logging

# The configs live beside the library, not in it: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top
from avvp_jax import checkpoints, logs, metrics, pipeline, reports
from avvp_jax import workdir as wd  # pylint: disable=g-import-not-at-top
from benchmarks import markdown  # pylint: disable=g-import-not-at-top
from configs import ma  # pylint: disable=g-import-not-at-top

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
    'cr_ensemble': ('cr', {'refine.ensemble': True}, 'cr'),
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
    'e': ('Refinement by each seed\'s model or by the ensemble of all seeds (MA)', (
        ('each seed (default)', 'cr', 'final'), ('ensemble of the seeds', 'cr_ensemble', 'final'))),
}
STAT_KEYS = ('audio/dropped', 'audio/precision', 'audio/recall',
             'visual/dropped', 'visual/precision', 'visual/recall',
             'audio/error_classes', 'visual/error_classes')


def markers(table: str) -> tuple[str, str]:
  return f'<!-- ablation:{table}:start -->', f'<!-- ablation:{table}:end -->'


def make_config(run: str, seed: int, num_seeds: int):
  arg, overrides, _ = RUNS[run]
  config = ma.get_config(arg)
  config.seed = seed
  config.num_seeds = num_seeds
  config.update_from_flattened_dict(overrides)
  return config


def run_pipeline(run: str, config, workdir: str, shared_base: str | None) -> float:
  """Runs (or resumes) one pipeline, copying a shared stage 1 into a new workdir first;
  returns the wall minutes of this call."""
  if shared_base and not os.path.exists(workdir):
    os.makedirs(workdir)
    shutil.copytree(os.path.join(shared_base, 'base'), os.path.join(workdir, 'base'))
  print(f'=== {run}, seeds {config.seed}..{config.seed + config.num_seeds - 1} -> {workdir}',
        flush=True)
  start = time.perf_counter()
  pipeline.run(config, workdir)
  return (time.perf_counter() - start) / 60


def training_minutes(workdir: str) -> float:
  """The epochs this workdir trained itself (a copied stage 1 is not counted), in minutes; an
  epoch trains all seeds at once and logs one record per seed with its time."""
  epochs = {(r.stage, r.epoch): r.seconds for r in logs.read_metrics(workdir)}
  return sum(epochs.values()) / 60


def runs_of(tables: list[str]) -> list[str]:
  """The runs the tables need, each run after the one whose stage 1 it shares."""
  needed = {run for t in tables for _, run, _ in TABLES[t][1]}
  needed |= {RUNS[r][2] for r in needed if RUNS[r][2]}
  return [r for r in RUNS if r in needed]


def _per_seed(workdir: str, stage: str) -> list[dict]:
  report = reports.read_report(wd.stage_paths(workdir, stage)['report'])
  return [p['results'] for p in report['per_seed']]


def table_section(table: str, workdirs: dict[str, str], seeds: list[int]) -> str:
  """One table: the setting and training time, the ten numbers per row, then the refinement
  statistics of its runs; mean ± sd over the seeds."""
  title, rows = TABLES[table]
  config = ma.get_config()
  d, tc = config.data.synthetic, config.train
  runs = runs_of([table])
  lines = [
      f'### {title}', '',
      f'Built-in synthetic LLP: {d.num_train} train / {d.num_val} val / {d.num_test} test clips; '
      f'{tc.epochs} epochs per training stage, lr x0.1 every {tc.lr_decay_every}; seeds '
      f'{", ".join(map(str, seeds))}, trained in one program per run (mean ± sd over seeds; F '
      'in %, test split). Training time of all seeds together (epochs and their validation, '
      'from metrics.jsonl; a copied stage 1 counts in the run that trained it): ' + ', '.join(
          f'{run} {training_minutes(workdirs[run]):.1f} min' for run in runs)
      + f'; {sum(training_minutes(workdirs[run]) for run in runs):.1f} min for the table.', '']
  keys = [f'{level}/{key}' for level, _ in metrics.LEVELS for key, _ in metrics.COLUMNS]
  names = [f'{level} {name}' for level, _ in metrics.LEVELS for _, name in metrics.COLUMNS]
  lines += markdown.header(['Variant'] + names)
  for label, run, stage in rows:
    per_seed = _per_seed(workdirs[run], stage)
    lines.append(markdown.row([label] + [metrics.format_mean_sd([r[k] for r in per_seed])
                                         for k in keys]))
  refined = list(dict.fromkeys(run for _, run, stage in rows if stage == 'final'))
  if refined:
    lines += ['', 'Refinement of those runs on the train split, against its dense truth '
              '(precision and recall in %; error classes: of the 25 classes, those where the '
              'frozen stage-1 model errs on its training clips):', '',
              *markdown.header(('Run',) + STAT_KEYS)]
    for run in refined:
      stats = checkpoints.load_refined(workdirs[run])['stats']['per_seed']
      lines.append(markdown.row([run] + [metrics.format_mean_sd([s[k] for s in stats])
                                         for k in STAT_KEYS]))
  return '\n'.join(lines)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  args = flags.FLAGS
  unknown = set(args.tables) - set(TABLES)
  if unknown:
    raise app.UsageError(f'Unknown tables {sorted(unknown)}; choose from {sorted(TABLES)}.')
  workdirs = {}
  for run in runs_of(args.tables):
    workdirs[run] = os.path.join(args.workdir, run)
    shared = RUNS[run][2]
    minutes = run_pipeline(run, make_config(run, args.seed, args.num_seeds), workdirs[run],
                           workdirs[shared] if shared else None)
    print(f'=== {run}: {minutes:.1f} min', flush=True)
  seeds = list(range(args.seed, args.seed + args.num_seeds))
  for table in args.tables:
    body = table_section(table, workdirs, seeds)
    print(body)
    markdown.replace_section(args.results, body, markers(table), '## Ablations')


if __name__ == '__main__':
  # Defined here, not on import: tests import this module's tables.
  flags.DEFINE_integer('seed', 0, 'The first model seed (the data set is fixed).')
  flags.DEFINE_integer('num_seeds', 3, 'Seeds per run, trained in one program.')
  flags.DEFINE_list('tables', ['2', '3', '4', 'k', 'e'], 'Which tables to run.')
  flags.DEFINE_string('workdir', 'workdirs/ablation', 'Where the runs go.')
  flags.DEFINE_string('results', os.path.join(os.path.dirname(__file__), 'ablations.md'),
                      'The Markdown file whose sections of these tables are rewritten.')
  app.run(main)
