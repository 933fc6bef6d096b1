"""Table 2 of the paper (Baseline, +C, +R, +C+R) on the synthetic benchmark, over seeds.

  python benchmarks/ablation.py [--seeds=0,1,2] [--workdir=workdirs/ablation] [--num_train=512]

Per seed it runs two pipelines: `configs/ma.py:r` (its stage 1 is the Baseline, its stage 3 is
+R) and `configs/ma.py:cr` (stage 1 is +C, stage 3 is +C+R = MA); stage 1 of an R config is
exactly the model of the corresponding one-stage config, so it is trained once. It then reruns
stages 2-3 of both from the stage-1 checkpoint with the best validation score
(`train.base_selection=best_val`, the guard of METHOD.md section 4b), reusing stage 1.
Every run resumes where it stopped. Writes the mean and std of the ten numbers per variant and
the refinement statistics into benchmarks/RESULTS.md, between the ablation markers.
"""

import json
import os
import shutil
import sys

import numpy as np
from absl import app, flags, logging

# The configs live beside the library, not in it: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from avvp_jax import metrics, pipeline, refine, train  # pylint: disable=g-import-not-at-top
from configs import ma  # pylint: disable=g-import-not-at-top

_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Model seeds (the data set is fixed).')
_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/ablation', 'Where the runs go.')
_NUM_TRAIN = flags.DEFINE_integer('num_train', 512, 'Synthetic training clips.')
_NUM_VAL = flags.DEFINE_integer('num_val', 128, 'Synthetic validation clips.')
_NUM_TEST = flags.DEFINE_integer('num_test', 512, 'Synthetic test clips.')
_EPOCHS = flags.DEFINE_integer('epochs', 40, 'Epochs per training stage.')
_RESULTS = flags.DEFINE_string('results', os.path.join(os.path.dirname(__file__), 'RESULTS.md'),
                               'The Markdown file whose ablation section is rewritten.')

START, END = '<!-- ablation:start -->', '<!-- ablation:end -->'
# (row label, run name, stage whose test report is the row)
ROWS = (
    ('Baseline (HAN)', 'r', 'base'),
    ('+C', 'cr', 'base'),
    ('+R', 'r', 'final'),
    ('+C+R (MA)', 'cr', 'final'),
    ('+R, best-val stage 1', 'r_best', 'final'),
    ('+C+R, best-val stage 1', 'cr_best', 'final'),
)


def _config(variant: str, seed: int):
  config = ma.get_config(variant.replace('_best', ''))
  config.seed = seed
  config.data.synthetic.num_train = _NUM_TRAIN.value
  config.data.synthetic.num_val = _NUM_VAL.value
  config.data.synthetic.num_test = _NUM_TEST.value
  config.train.epochs = _EPOCHS.value
  if variant.endswith('_best'):
    config.train.base_selection = 'best_val'
  return config


def run_seed(seed: int) -> dict[str, str]:
  """Runs the four pipelines of one seed; returns {run name: workdir}."""
  workdirs = {}
  for variant in ('r', 'cr', 'r_best', 'cr_best'):
    workdir = os.path.join(_WORKDIR.value, f'{variant}_seed{seed}')
    if variant.endswith('_best') and not os.path.exists(workdir):
      # Stage 1 does not depend on base_selection: reuse the one trained above.
      source = workdirs[variant.replace('_best', '')]
      os.makedirs(workdir)
      shutil.copytree(os.path.join(source, 'base'), os.path.join(workdir, 'base'))
    print(f'=== seed {seed}: {variant} -> {workdir}', flush=True)
    pipeline.run(_config(variant, seed), workdir)
    workdirs[variant] = workdir
  return workdirs


def _mean_std(values: list[float]) -> str:
  return f'{np.mean(values):.1f} ± {np.std(values):.1f}'


def summarise(runs: list[dict[str, str]]) -> str:
  """The Markdown section: Table 2, refinement statistics, and the paper's expectations."""
  results = {}
  for label, run, stage in ROWS:
    reports = []
    for workdirs in runs:
      with open(train.stage_paths(workdirs[run], stage)['report']) as f:
        reports.append(json.load(f)['results'])
    results[label] = {k: [r[k] for r in reports] for k in reports[0]}

  keys = [f'{level}/{key}' for level, _ in metrics.LEVELS for key, _ in metrics.COLUMNS]
  header = ' | '.join(f'{level} {name}' for level, _ in metrics.LEVELS
                      for _, name in metrics.COLUMNS)
  lines = [
      f'Synthetic LLP: {_NUM_TRAIN.value} train / {_NUM_VAL.value} val / {_NUM_TEST.value} test '
      f'clips, {_EPOCHS.value} epochs per training stage, seeds {", ".join(_SEEDS.value)} '
      '(mean ± std over seeds; F-scores in %, test split).', '',
      f'| Variant | {header} |', '|---' * (len(keys) + 1) + '|']
  for label, r in results.items():
    lines.append(f'| {label} | ' + ' | '.join(_mean_std(r[k]) for k in keys) + ' |')

  lines += ['', 'Refinement (stage 2) on the train split, against its dense truth:', '',
            '| Run | audio dropped | audio precision | audio recall | visual dropped | '
            'visual precision | visual recall |', '|---|---|---|---|---|---|---|']
  for run in ('r', 'cr', 'r_best', 'cr_best'):
    stats = [refine.load_refined(w[run])['stats'] for w in runs]
    cell = lambda k: _mean_std([s[k] for s in stats])
    lines.append(f'| {run} | {cell("audio/dropped")} | {cell("audio/precision")} | '
                 f'{cell("audio/recall")} | {cell("visual/dropped")} | '
                 f'{cell("visual/precision")} | {cell("visual/recall")} |')

  base, ma_row = results['Baseline (HAN)'], results['+C+R (MA)']
  gain = lambda k: np.mean(ma_row[k]) - np.mean(base[k])
  verdict = lambda g, target: 'met' if g >= target else 'NOT met'
  lines += ['', 'The paper expects +C+R to beat the Baseline by at least 3 points of segment-level '
            'Visual F and 2 points of segment-level Type@AV. Measured:',
            f'- segment Visual F: {gain("segment/visual"):+.1f} points '
            f'({verdict(gain("segment/visual"), 3)})',
            f'- segment Type@AV: {gain("segment/type"):+.1f} points '
            f'({verdict(gain("segment/type"), 2)})']
  return '\n'.join(lines)


def write_section(path: str, body: str) -> None:
  """Replaces the text between the ablation markers of `path` (creating what is missing)."""
  text = open(path).read() if os.path.exists(path) else '# Results\n'
  if START in text and END in text:
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
  else:
    head, tail = text.rstrip('\n') + '\n\n## Ablation (Table 2)\n\n', '\n'
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(f'{head}{START}\n{body}\n{END}{tail}')
  os.replace(tmp, path)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  runs = [run_seed(int(seed)) for seed in _SEEDS.value]
  body = summarise(runs)
  print(body)
  write_section(_RESULTS.value, body)


if __name__ == '__main__':
  app.run(main)
