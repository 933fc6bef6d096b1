"""Extracting a folder of videos: the bookkeeping around `extractor` (which videos, resume,
progress, the failures and their summary)."""

import dataclasses
import os

import numpy as np
import tqdm

from avvp_jax.extract import extractor, video

VIDEO_SUFFIXES = ('.mp4', '.mkv', '.webm', '.avi', '.mov', '.m4v')


@dataclasses.dataclass
class Summary:
  """What a run over a folder did: clip names extracted now, found already extracted,
  {video path: why it failed}, {video path: warning}."""
  extracted: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)
  failed: dict[str, str] = dataclasses.field(default_factory=dict)
  warnings: dict[str, str] = dataclasses.field(default_factory=dict)

  def format(self) -> str:
    lines = [f'videos: {len(self.extracted)} extracted, {len(self.skipped)} already there, '
             f'{len(self.failed)} failed']
    lines += [f'  failed: {why}' for why in self.failed.values()]
    lines += [f'  warning: {why}' for why in self.warnings.values()]
    return '\n'.join(lines)


def load_networks(weights: str | None, random: bool) -> tuple[dict, str]:
  """(the networks' variables, the label the manifest records: 'random' or the weights'
  digest). Refuses to run without the three weight files, naming each and its source."""
  if random:
    if weights:
      raise SystemExit('Give --weights or --random_weights, not both.')
    print(extractor.RANDOM_NOTE)
    return extractor.random_weights(), 'random'
  missing = extractor.missing_weights(weights)
  if missing:
    raise SystemExit(
        'extract: the networks need their pretrained weights in --weights'
        f'{" (" + weights + ")" if weights else ""}; missing:\n  ' + '\n  '.join(missing) +
        '\n(--random_weights runs untrained networks, for tests and benchmarks only.)')
  variables = extractor.load_weights(weights)
  return variables, extractor.weights_digest(variables)


def list_videos(folder: str) -> list[str]:
  """The video files of `folder` (by suffix), sorted; a clip's name is its file's stem."""
  if not os.path.isdir(folder):
    raise SystemExit(f'{folder}: no such folder of videos.')
  paths = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                 if f.lower().endswith(VIDEO_SUFFIXES))
  if not paths:
    raise SystemExit(f'{folder}: no video files ({", ".join(VIDEO_SUFFIXES)}).')
  return paths


def clip_name(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def extract_folder(videos: str, out: str, start: float, variables: dict,
                   weights: str) -> Summary:
  """Writes the release layout of every video of `videos` into `out`, skipping those
  already there. A bad video is reported and the others go on. `weights`: 'random' or the
  weights' digest, recorded in `out`'s manifest."""
  extractor.open_manifest(out, weights, start)
  functions = extractor.feature_functions(variables)
  summary = Summary()
  for path in tqdm.tqdm(list_videos(videos), desc='extract', unit='video'):
    name = clip_name(path)
    if extractor.is_extracted(out, name):
      summary.skipped.append(name)
      continue
    try:
      clip = video.decode(path, start)
    except video.VideoError as e:
      summary.failed[path] = str(e)
      tqdm.tqdm.write(f'extract: {e}')
      continue
    if clip.variable_rate:
      shortest, longest = clip.variable_rate
      summary.warnings[path] = (
          f'{path}: variable frame rate (frame intervals {1000 * shortest:.1f} to '
          f'{1000 * longest:.1f} ms); its frames were taken by timestamp, as ffmpeg -r 8 '
          'does.')
    inputs = extractor.clip_inputs(clip)
    features = {n: np.asarray(f(inputs[n])) for n, f in functions.items()}
    extractor.write_features(out, name, features)
    summary.extracted.append(name)
  return summary
