"""Draws the pictures of a run from its workdir, as PNG files (the main command draws them too).

  python launch/plots.py --workdir=workdirs/ma_cr [--clips=NAME,NAME] [--split=test]
                         [--seed=S] [--model=last] [--out=DIR]

Writes into --out (default <workdir>/plots/):
  timeline_<split>_<clip>.png  per clip, each trained stage's segment predictions of audio and
                               visual against the truth (25 classes by 10 segments), like
                               Fig. 3 of the paper; --clips, or the first 3 clips of --split
                               with an event that is heard but not seen or seen but not heard
  refinement.png               training clips whose labels stage 2 dropped for a modality,
                               against the truth where it is known
  per_class.png                per-class segment F on test, stage 1 against stage 3
  curves.png                   the loss terms and val Type@AV per epoch, every stage and seed
A picture whose input the workdir does not hold yet (e.g. no refinement) is left out.
"""

import os

from absl import app, flags, logging

from avvp_jax import plots, workdir as wd
from avvp_jax.data import load_splits

_WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir written by launch/main.py.')
_CLIPS = flags.DEFINE_list('clips', None, 'Clips of --split to draw timelines of.')
_NUM_CLIPS = flags.DEFINE_integer('num_clips', 3, 'Without --clips: how many to choose.')
_SPLIT = flags.DEFINE_enum('split', 'test', ['val', 'test'], 'Whose clips the timelines show.')
_SEED = flags.DEFINE_integer('seed', None, "Which seed's models; default the workdir's first.")
_MODEL = flags.DEFINE_enum('model', None, list(wd.MODEL_SELECTIONS),
                           "The timelines' model: the last epoch or the best on val; default "
                           "the one the method tests (config.eval.model), which per_class.png, "
                           "from the stages' test reports, shows too.")
_OUT = flags.DEFINE_string('out', None, 'Where the pictures go.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  workdir = os.path.abspath(_WORKDIR.value)
  config = wd.load_config(workdir)
  try:
    paths = plots.plot_run(config, workdir, load_splits(config.data), split=_SPLIT.value,
                              clips=_CLIPS.value, num_clips=_NUM_CLIPS.value, seed=_SEED.value,
                              model=_MODEL.value, out=_OUT.value)
  except ValueError as e:  # No such clip or seed, or no truth to draw against.
    raise SystemExit(f'plots.py: {e}') from None
  for path in paths:
    print(f'  {path}')


if __name__ == '__main__':
  app.run(main)
