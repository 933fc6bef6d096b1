"""The public LLP release (docs/spec.md section 1), converted once into a tensorflow-datasets build.

`load(config.data)` reads the five annotation CSVs it needs in `config.data.dir` and one
`.npy` per clip and feature (named by its 11-character video id) from three folders, by default
<dir>/vggish, <dir>/res152 and <dir>/r2plus1d_18, or the same under <dir>/feats/ (the layout
of the reference repositories), or set by `audio_dir`, `video_dir`, `st_dir`.
The first call validates every file and writes an array_record build (a tfds progress bar);
later calls only read it back. The 2D features are stored pre-averaged to (10, 2048): fc_v is
affine, so averaging the 8 frames of a segment first gives the same model (docs/spec.md section 2)
with 8x less storage.

Staleness: the build goes to <tfds_dir>/inputs-<key>/llp/<version>, where `key` hashes the
resolved CSV and feature folders and the bytes of the five CSVs it is made from. Other
folders or edited annotations therefore get their own build. Feature files are assumed not to
change in place (hashing 35,547 of them would cost a full read); after replacing some, delete
the build folder. Old builds are never deleted automatically.
"""

import hashlib
import os

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from avvp_jax.data import annotations, files
from avvp_jax.data.classes import (AUDIO_DIM, FRAMES_PER_SEGMENT, NUM_CLASSES, NUM_SEGMENTS,
                                   VIDEO_2D_DIM, VIDEO_3D_DIM)
from avvp_jax.data.split import FEATURES, Split, aligned_stack

SPLIT_FILES = {'train': 'AVVP_train.csv', 'val': 'AVVP_val_pd.csv', 'test': 'AVVP_test_pd.csv'}
DENSE_FILES = {'gt_a': 'AVVP_eval_audio.csv', 'gt_v': 'AVVP_eval_visual.csv'}
DENSE_SPLITS = ('val', 'test')  # LLP has no dense truth for train.
# Split field -> (config.data field, default folder under `dir`, per-clip shape on disk).
FEATURE_FOLDERS = {
    'audio': ('audio_dir', 'vggish', (NUM_SEGMENTS, AUDIO_DIM)),
    'video_2d': ('video_dir', 'res152', (NUM_SEGMENTS * FRAMES_PER_SEGMENT, VIDEO_2D_DIM)),
    'video_3d': ('st_dir', 'r2plus1d_18', (NUM_SEGMENTS, VIDEO_3D_DIM)),
}
_CONFIG_FIELD = {default: field for field, default, _ in FEATURE_FOLDERS.values()}
READ_BATCH = 256  # Records per `__getitems__` call when reading a build back.

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put the LLP release (https://github.com/YapengTian/AVVP-ECCV20) in one folder, `config.data.dir`:
  AVVP_train.csv, AVVP_val_pd.csv, AVVP_test_pd.csv: weak labels (filename, event_labels);
  AVVP_eval_audio.csv, AVVP_eval_visual.csv: dense labels (filename, onset, offset, event_labels);
  vggish/<id>.npy (10, 128), res152/<id>.npy (80, 2048), r2plus1d_18/<id>.npy (10, 512): float32
  features, one file per clip, <id> the first 11 characters of its filename.
The feature folders may also be in <dir>/feats/ (vggish/, res152/, r2plus1d_18/), or elsewhere:
set config.data.audio_dir, video_dir, st_dir.
"""


class FeatureError(ValueError):
  """A feature file is missing or malformed; the message names the file and the clip."""


def input_folders(data_config) -> dict[str, str]:
  """The resolved input folders: 'csv' and one per Split feature field."""
  if not data_config.dir:
    raise ValueError('config.data.dir must name the folder of the LLP annotation CSVs.\n'
                     + MANUAL_DOWNLOAD_INSTRUCTIONS)
  resolve = lambda path: os.path.realpath(os.path.expanduser(path))
  folders = {'csv': resolve(data_config.dir)}
  for field, (config_field, default, _) in FEATURE_FOLDERS.items():
    folders[field] = resolve(data_config[config_field] or _default_folder(folders['csv'], default))
  return folders


def _default_folder(csv_dir: str, name: str) -> str:
  """<dir>/<name>, or <dir>/feats/<name> as the reference repositories lay the release out;
  where neither exists, the first (the missing-file error then names it)."""
  candidates = [os.path.join(csv_dir, name), os.path.join(csv_dir, 'feats', name)]
  found = [c for c in candidates if os.path.isdir(c)]
  if len(found) > 1:
    raise ValueError(f'Both {found[0]} and {found[1]} exist: set config.data.'
                     f'{_CONFIG_FIELD[name]} to the one that holds the features.')
  return found[0] if found else candidates[0]


def _csv_paths(csv_dir: str) -> list[str]:
  """The five CSVs a build is made from; raises if one is missing."""
  paths = [os.path.join(csv_dir, name)
           for name in (*SPLIT_FILES.values(), *DENSE_FILES.values())]
  missing = [path for path in paths if not os.path.exists(path)]
  if missing:
    raise FileNotFoundError(f'LLP annotation file(s) not found: {", ".join(missing)}.\n'
                            + MANUAL_DOWNLOAD_INSTRUCTIONS)
  return paths


def build_key(folders: dict[str, str]) -> str:
  """12 hex digits identifying a build's inputs: the folders and the CSVs' bytes."""
  digest = hashlib.sha256()
  for name, folder in sorted(folders.items()):
    digest.update(f'{name}={folder}\n'.encode())
  for path in _csv_paths(folders['csv']):
    with open(path, 'rb') as f:
      digest.update(f.read())
  return digest.hexdigest()[:12]


def read_weak_splits(csv_dir: str) -> dict[str, tuple[list[str], np.ndarray]]:
  """{split: (names (N,), labels float32 (N, 25))}, checking that no video id is in two splits."""
  splits = {split: annotations.read_weak_labels(os.path.join(csv_dir, name))
            for split, name in SPLIT_FILES.items()}
  owner = {}  # Video id -> (split, clip).
  for split, (names, _) in splits.items():
    for clip in names:
      vid = annotations.video_id(clip)
      if vid in owner:
        other_split, other_clip = owner[vid]
        raise annotations.AnnotationError(
            f'{os.path.join(csv_dir, SPLIT_FILES[split])}: clip {clip!r} has the video id {vid!r} '
            f'of clip {other_clip!r} in {SPLIT_FILES[other_split]}: a clip can be in one split '
            'only.')
      owner[vid] = (split, clip)
  return splits


def _report(stats: dict[str, annotations.DenseStats]) -> None:
  """One warning line per kind of dense row that was handled without failing."""
  for attr, what in (('empty_rows', 'mark nothing (offset <= onset; an empty slice, as in the '
                      'reference)'),
                     ('unknown_clip_rows', 'name clips in neither val nor test (ignored)')):
    per_file = {DENSE_FILES[field]: getattr(s, attr) for field, s in stats.items()}
    count = sum(len(rows) for rows in per_file.values())
    if count:
      examples = '; '.join(f'{name}: {annotations.describe_rows(rows, 2)}'
                           for name, rows in per_file.items() if rows)
      logging.warning('LLP: %d dense annotation rows %s: %s.', count, what, examples)


def read_dense_truth(csv_dir: str, names: list[str]) -> dict[str, np.ndarray]:
  """{'gt_a', 'gt_v'}: bool (N, 25, 10) dense truth of `names`; reports the rows it skipped."""
  truth, stats = {}, {}
  for field, name in DENSE_FILES.items():
    rows = annotations.read_event_rows(os.path.join(csv_dir, name))
    truth[field], stats[field] = annotations.dense_truth(rows, names)
  _report(stats)
  return truth


def load_feature(path: str, clip: str, shape: tuple[int, ...]) -> np.ndarray:
  """Reads one feature file and checks it: float32 of `shape`, finite."""
  x = files.read_npy(path, clip, FeatureError, 'feature')
  if x.shape != shape:
    raise FeatureError(f'{path}: clip {clip!r}: shape {x.shape}, expected {shape}.')
  if x.dtype != np.float32:
    raise FeatureError(f'{path}: clip {clip!r}: dtype {x.dtype}, expected float32.')
  nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
  if nan or inf:
    raise FeatureError(f'{path}: clip {clip!r}: {nan} NaN and {inf} inf values.')
  return x


def segment_mean(frames: np.ndarray) -> np.ndarray:
  """(80, D) frame features -> (10, D): the mean of each segment's 8 frames, float32."""
  grouped = frames.reshape(NUM_SEGMENTS, FRAMES_PER_SEGMENT, -1)
  return grouped.mean(1, dtype=np.float64).astype(np.float32)


class LlpBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Converts the LLP release (CSV folder = the manual dir) into array_record files."""

  name = 'llp'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Weak labels, dense val/test truth, 2D features pre-averaged.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  # Not a tfds package, so no checksums file next to the code. (tfds' own lookup of the package
  # path imports `importlib_resources`, which it only requires on Python < 3.9.)
  code_path = None

  def __init__(self, *, folders: dict[str, str], **kwargs):
    """folders: `input_folders(...)`, recorded in the build's description."""
    self._folders = folders
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    inputs = ', '.join(f'{name}={folder}' for name, folder in self._folders.items())
    tensor = lambda shape, dtype, **kw: tfds.features.Tensor(shape=shape, dtype=dtype, **kw)
    # Raw bytes rather than a proto float list: the same size, far cheaper to serialize.
    features = lambda dim: tensor((NUM_SEGMENTS, dim), np.float32, encoding='bytes')
    gt = tensor((NUM_CLASSES, NUM_SEGMENTS), np.bool_, optional=True)  # None for train.
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'LLP (weakly-supervised audio-visual video parsing). Inputs: {inputs}.',
        features=tfds.features.FeaturesDict({
            'name': tfds.features.Text(),
            'audio': features(AUDIO_DIM),
            'video_2d': features(VIDEO_2D_DIM),
            'video_3d': features(VIDEO_3D_DIM),
            'labels': tensor((NUM_CLASSES,), np.float32),
            'gt_a': gt,
            'gt_v': gt,
        }))

  def _split_generators(self, dl_manager):
    csv_dir = os.fspath(dl_manager.manual_dir)
    for field, (config_field, _, _) in FEATURE_FOLDERS.items():
      if not os.path.isdir(self._folders[field]):
        raise FileNotFoundError(
            f'{self._folders[field]}: feature folder (config.data.{config_field}) not found.\n'
            + MANUAL_DOWNLOAD_INSTRUCTIONS)
    weak = read_weak_splits(csv_dir)
    dense_names = [clip for split in DENSE_SPLITS for clip in weak[split][0]]
    truth = read_dense_truth(csv_dir, dense_names)
    generators, start = {}, 0
    for split, (names, labels) in weak.items():
      gt = None
      if split in DENSE_SPLITS:
        gt = {field: t[start:start + len(names)] for field, t in truth.items()}
        start += len(names)
      generators[split] = self._generate_examples(names, labels, gt)
    return generators

  def _generate_examples(self, names, labels, gt):
    """Yields (clip, example) after validating the clip's three feature files."""
    for i, clip in enumerate(names):
      vid = annotations.video_id(clip)
      features = {
          field: load_feature(os.path.join(self._folders[field], f'{vid}.npy'), clip, shape)
          for field, (_, _, shape) in FEATURE_FOLDERS.items()}
      features['video_2d'] = segment_mean(features['video_2d'])
      yield clip, {
          'name': clip, **features, 'labels': labels[i],
          'gt_a': None if gt is None else gt['gt_a'][i],
          'gt_v': None if gt is None else gt['gt_v'][i],
      }


def _read_split(source, names: list[str], build_dir: str) -> Split:
  """Reads all records of one split back, in the CSV order `names` (array_record shuffles)."""
  by_name = {}
  for start in range(0, len(source), READ_BATCH):
    for record in source.__getitems__(list(range(start, min(start + READ_BATCH, len(source))))):
      by_name[record['name'].decode()] = record
  if sorted(by_name) != sorted(names):
    raise RuntimeError(f'{build_dir}: the build does not hold the clips of its CSV; delete it.')
  records = [by_name[clip] for clip in names]
  stack = lambda field: np.stack([r[field] for r in records])
  has_truth = records[0]['gt_a'] is not None
  features = {k: aligned_stack([r[k] for r in records]) for k in FEATURES}
  return Split(
      names=np.array(names), **features, labels=stack('labels'),
      gt_a=stack('gt_a') if has_truth else None, gt_v=stack('gt_v') if has_truth else None)


def load(data_config) -> dict[str, Split]:
  """Returns {'train', 'val', 'test'} -> Split, building the tfds data set on first use."""
  folders = input_folders(data_config)
  tfds_dir = os.path.realpath(os.path.expanduser(
      data_config.tfds_dir or os.path.join(folders['csv'], 'tfds')))
  builder = LlpBuilder(folders=folders, file_format='array_record',
                       data_dir=os.path.join(tfds_dir, f'inputs-{build_key(folders)}'))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=folders['csv']))
  sources = builder.as_data_source()
  weak = read_weak_splits(folders['csv'])
  return {split: _read_split(sources[split], names, builder.data_dir)
          for split, (names, _) in weak.items()}


def read_feature_folder(folder: str) -> Split:
  """The clips of a folder in the release layout (vggish/, res152/, r2plus1d_18/ in it or in
  its feats/), one .npy triple per clip, named by the files of vggish/: a Split without labels
  (zeros) or dense truth, for running a trained model on new clips."""
  dirs = {field: _default_folder(os.path.realpath(folder), default)
          for field, (_, default, _) in FEATURE_FOLDERS.items()}
  if not os.path.isdir(dirs['audio']):
    raise FeatureError(f'{dirs["audio"]}: no such folder; expected the release layout\n'
                       + MANUAL_DOWNLOAD_INSTRUCTIONS)
  names = sorted(f[:-len('.npy')] for f in os.listdir(dirs['audio']) if f.endswith('.npy'))
  if not names:
    raise FeatureError(f'{dirs["audio"]}: no .npy feature files.')
  arrays = {field: [] for field in FEATURE_FOLDERS}
  for name in names:
    for field, (_, _, shape) in FEATURE_FOLDERS.items():
      x = load_feature(os.path.join(dirs[field], f'{name}.npy'), name, shape)
      arrays[field].append(segment_mean(x) if field == 'video_2d' else x)
  return Split(names=np.array(names), **{k: aligned_stack(v) for k, v in arrays.items()},
               labels=np.zeros((len(names), NUM_CLASSES), np.float32))
