"""Features of a folder of videos in the LLP release's layout, for parse.py and training.

  python launch/extract.py --videos=DIR --out=DIR --weights=DIR [--start=S]

Each video gives the 10 s from --start: vggish/<name>.npy (10, 128), res152/<name>.npy
(80, 2048) and r2plus1d_18/<name>.npy (10, 512), <name> being the file's name without its
suffix. --weights holds the three public PyTorch weight files (the command lists them and
where they come from when one is missing); they are converted once, which needs PyTorch.
Videos already extracted in --out are skipped, so a killed run resumes; a bad video is
reported and the others go on. --random_weights is for tests and benchmarks only.
"""

from absl import app, flags, logging

from avvp_jax.extract import extractor, run

_VIDEOS = flags.DEFINE_string('videos', None, 'A folder of video files.')
_OUT = flags.DEFINE_string('out', None, 'Where the features go (the release layout).')
_START = flags.DEFINE_float('start', 0.0, 'Where the 10-s clip starts in each video (s).')
_WEIGHTS = flags.DEFINE_string('weights', None, 'The folder of the three weight files.')
_RANDOM = flags.DEFINE_bool('random_weights', False,
                            'Untrained networks: for tests and benchmarks only.')
flags.mark_flags_as_required(['videos', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  variables, label = run.load_networks(_WEIGHTS.value, _RANDOM.value)
  summary = run.extract_folder(_VIDEOS.value, _OUT.value, _START.value, variables, label)
  print(summary.format())
  if label == 'random':
    print(extractor.RANDOM_NOTE)
  if summary.failed:
    raise SystemExit(1)


if __name__ == '__main__':
  app.run(main)
