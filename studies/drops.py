"""Why the refinement drops truly visible labels: the visual rule's evidence per class.

  python studies/drops.py --workdir=workdirs/ma_cr

For each seed of a finished workdir (built-in data: the train split has dense truth), the
frozen stage-1 model (`train.base_selection`) on its training clips and its own saved
partners, per class: the visual training errors (clips whose v_prob >= 0.5 disagrees with
the weak label), E_v, the rule's bar `threshold` x E_v, the labelled clips where the event
is truly visible and how many of those the rule dropped, and the median v_prob on the
original pair, with the partner's audio on the truly visible clips, and with the partner's
audio on the truly invisible ones. Then the Spearman correlation over the classes between
the error count and the share of truly visible labels dropped. It checks first that the
drops recomputed from these probabilities are the saved ones. Prints Markdown tables
(studies/per_class.md holds their output).
"""

import os
import sys

import numpy as np
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top
from avvp_jax import checkpoints, refine, seeds, train, workdir as wd
from avvp_jax.data import load_splits
from avvp_jax.data.classes import CLASSES
from benchmarks import markdown

COLUMNS = ('class', 'visual errors (clips)', 'E_v', 'bar', 'labelled, truly visible',
           'dropped of those', 'median v_prob, original',
           'median v_prob, partner audio', 'median v_prob, partner audio, on truly invisible')


def _median(values: np.ndarray) -> str:
  return f'{np.median(values):.2f}' if len(values) else 'n/a'


def _ranks(x: np.ndarray) -> np.ndarray:
  """Ranks 1..n, ties sharing their mean rank."""
  order = np.argsort(x, kind='stable')
  ranks = np.empty(len(x))
  ranks[order] = np.arange(1, len(x) + 1)
  for value in np.unique(x):
    ranks[x == value] = ranks[x == value].mean()
  return ranks


def spearman(x, y) -> float:
  return float(np.corrcoef(_ranks(np.asarray(x, float)), _ranks(np.asarray(y, float)))[0, 1])


def seed_table(config, workdir: str, seed: int) -> tuple[str, dict]:
  """The per-class table of one seed and its summary {errors, classes with none, visible
  labels those lost, spearman}."""
  train_split = load_splits(config.data)['train']
  if not train_split.has_dense_truth:
    raise SystemExit('The train split has no dense truth: this needs the built-in data.')
  base = checkpoints.restore_params(workdir, 'base', config.train.base_selection)
  model, params, seed = seeds.one_seed(config, base, seed, wd.checkpoint_dir(workdir, 'base'),
                                     'base')
  refined = checkpoints.load_refined(workdir)
  s, _ = seeds.seed_index(refined['stats']['seeds'], seed, wd.refine_dir(workdir))
  orig = train.predict(model, params, train_split, config.train.eval_batch_size)
  swapped = refine.swapped_probs(model, params, train_split, refined['partners'][s],
                                 config.refine.batch_size)
  if config.refine.ensemble:
    raise SystemExit('An ensemble refinement used all seeds\' models: not one seed\'s rule.')
  drop_a, drop_v = refine.refine_labels(orig, swapped, train_split.labels,
                                        config.refine.threshold, config.refine.modalities)
  if not ((drop_a == refined['drop_a'][s]).all() and (drop_v == refined['drop_v'][s]).all()):
    raise SystemExit(f'Seed {seed}: the recomputed drops differ from the saved ones.')
  labels = train_split.labels > 0
  errors = (refine.error_rate(orig['v_prob'], train_split.labels, refine.ERROR_THRESHOLD)
            * len(labels)).round().astype(int)
  e_v = refine.normalised_error(orig['v_prob'], train_split.labels)
  visible = labels & train_split.gt_v.any(-1)
  invisible = labels & ~train_split.gt_v.any(-1)
  lines = markdown.header(COLUMNS)
  share = []
  for c, name in enumerate(CLASSES):
    vis, inv = visible[:, c], invisible[:, c]
    share.append(drop_v[vis, c].mean() if vis.any() else 0.0)
    lines.append(markdown.row([
        name, errors[c], f'{e_v[c]:.2f}', f'{config.refine.threshold * e_v[c]:.2f}',
        int(vis.sum()), int(drop_v[vis, c].sum()), _median(orig['v_prob'][vis, c]),
        _median(swapped['v_changed_audio'][vis, c]),
        _median(swapped['v_changed_audio'][inv, c])]))
  none = errors == 0
  summary = {'errors': int(errors.sum()), 'per class': f'{errors.min()}-{errors.max()}',
             'classes with none': int(none.sum()),
             'truly visible labels those lost': int(drop_v[visible & none[None]].sum()),
             'spearman': spearman(errors, share)}
  return '\n'.join(lines), summary


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  workdir = os.path.abspath(flags.FLAGS.workdir)
  config = wd.load_config(workdir)
  summaries = {}
  for seed in seeds.seed_list(config):
    table, summaries[seed] = seed_table(config, workdir, seed)
    print(f'### seed {seed}\n\n{table}\n')
  print('\n'.join(markdown.header(['seed', 'visual training errors, all classes (per class)',
                                   'classes with none', 'truly visible labels those lost',
                                   'Spearman(errors, share of visible labels dropped)'])))
  for seed, s in summaries.items():
    print(markdown.row([seed, f'{s["errors"]} ({s["per class"]})', s['classes with none'],
                        s['truly visible labels those lost'], f'{s["spearman"]:.2f}']))


if __name__ == '__main__':
  flags.DEFINE_string('workdir', 'workdirs/ma_cr', 'A finished workdir of launch/main.py.')
  app.run(main)
