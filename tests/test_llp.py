"""The LLP loader: a tiny LLP-format folder, built through tfds and read back."""

import logging
import os
from pathlib import Path
import re

import numpy as np
import pytest

from avvp_jax.data import annotations, llp, load_splits
from avvp_jax.data.classes import CLASS_INDEX, NUM_CLASSES, NUM_SEGMENTS
from configs import ma

SPLITS = {  # CSV order; ids with '-' and '_' on purpose.
    'train': {'abcdefghijk_0_10': 'Speech,Dog', '-bcdefghijk_10_20': 'Car',
              'c_defghijkl_20_30': 'Cat,Cello', 'defghijklmn_0_10': 'Banjo',
              'efghijklmno_5_15': 'Speech', 'fghijklmnop_0_10': 'Dog'},
    'val': {'ghijklmnopq_0_10': 'Speech,Dog', '-hijklmnopq_30_40': 'Car',
            'ijklmno_pqr_0_10': 'Clapping'},
    'test': {'jklmnopqrst_0_10': 'Speech', 'klmnopqrstu_0_10': 'Cello,Violin_fiddle',
             'lmnopqrstuv_0_10': 'Dog'},
}
AUDIO_ROWS = [
    ('ghijklmnopq_0_10', 0, 3, 'Speech'),
    ('ghijklmnopq_0_10', 5, 10, 'Speech'),  # A second run of the same class.
    ('ghijklmnopq_0_10', 2, 2, 'Dog'),  # offset <= onset: marks nothing.
    ('-hijklmnopq_30_40', 0, 10, 'Car'),
    ('jklmnopqrst_0_10', 1, 4, 'Speech'),
    ('klmnopqrstu_0_10', 0, 10, 'Cello'),
    ('zzzzzzzzzzz_0_10', 0, 10, 'Dog'),  # A clip in no split.
]
VISUAL_ROWS = [
    ('ghijklmnopq_0_10', 0, 10, 'Dog'),
    ('ijklmno_pqr_0_10', 3, 6, 'Clapping'),
    ('lmnopqrstuv_0_10', 0, 10, 'Cat'),  # Not in the weak label: fine.
    ('klmnopqrstu_0_10', 0, 10, 'Violin_fiddle'),
]
EXPECTED_GT = {  # clip -> modality -> class -> covered segments.
    'ghijklmnopq_0_10': {'gt_a': {'Speech': '1110011111'}, 'gt_v': {'Dog': '1111111111'}},
    '-hijklmnopq_30_40': {'gt_a': {'Car': '1111111111'}, 'gt_v': {}},
    'ijklmno_pqr_0_10': {'gt_a': {}, 'gt_v': {'Clapping': '0001110000'}},
    'jklmnopqrst_0_10': {'gt_a': {'Speech': '0111000000'}, 'gt_v': {}},
    'klmnopqrstu_0_10': {'gt_a': {'Cello': '1111111111'},
                         'gt_v': {'Violin_fiddle': '1111111111'}},
    'lmnopqrstuv_0_10': {'gt_a': {}, 'gt_v': {'Cat': '1111111111'}},
}
FOLDERS = {'audio': 'vggish', 'video_2d': 'res152', 'video_3d': 'r2plus1d_18'}
SHAPES = {'audio': (10, 128), 'video_2d': (80, 2048), 'video_3d': (10, 512)}


def _write_csvs(csv_dir: Path, splits=SPLITS, audio_rows=AUDIO_ROWS) -> None:
  csv_dir.mkdir(parents=True, exist_ok=True)
  for split, file in llp.SPLIT_FILES.items():
    lines = [f'{clip}\t{labels}' for clip, labels in splits[split].items()]
    (csv_dir / file).write_text('filename\tevent_labels\n' + '\n'.join(lines) + '\n')
  for rows, file in ((audio_rows, 'AVVP_eval_audio.csv'), (VISUAL_ROWS, 'AVVP_eval_visual.csv')):
    lines = [f'{clip}\t{onset}\t{offset}\t{name}' for clip, onset, offset, name in rows]
    (csv_dir / file).write_text('filename\tonset\toffset\tevent_labels\n' + '\n'.join(lines))


def _write_features(dirs: dict[str, Path], seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
  """Random features for every clip; returns {clip: {field: array as written}}."""
  rng = np.random.default_rng(seed)
  written = {}
  for clip in (clip for split in SPLITS.values() for clip in split):
    written[clip] = {}
    for field, folder in dirs.items():
      folder.mkdir(parents=True, exist_ok=True)
      x = rng.normal(size=SHAPES[field]).astype(np.float32)
      np.save(folder / f'{annotations.video_id(clip)}.npy', x)
      written[clip][field] = x
  return written


def _config(csv_dir: Path, **overrides):
  config = ma.get_config()
  config.data.source = 'llp'
  config.data.dir = str(csv_dir)
  for key, value in overrides.items():
    config.data[key] = str(value)
  return config


@pytest.fixture
def release(tmp_path):
  """A complete LLP folder; returns (config, {clip: {field: array}})."""
  _write_csvs(tmp_path / 'llp')
  written = _write_features({f: tmp_path / 'llp' / d for f, d in FOLDERS.items()})
  return _config(tmp_path / 'llp'), written


def _gt(clip: str, field: str) -> np.ndarray:
  gt = np.zeros((NUM_CLASSES, NUM_SEGMENTS), bool)
  for name, segments in EXPECTED_GT[clip][field].items():
    gt[CLASS_INDEX[name]] = [s == '1' for s in segments]
  return gt


def _check(splits, written):
  """The loaded splits hold exactly what was written, in CSV order."""
  assert sorted(splits) == ['test', 'train', 'val']
  for split, clips in SPLITS.items():
    s = splits[split]
    assert s.names.tolist() == list(clips)
    assert s.audio.dtype == s.video_2d.dtype == s.video_3d.dtype == s.labels.dtype == np.float32
    for i, (clip, labels) in enumerate(clips.items()):
      np.testing.assert_array_equal(s.audio[i], written[clip]['audio'])
      np.testing.assert_array_equal(s.video_3d[i], written[clip]['video_3d'])
      frames = written[clip]['video_2d'].astype(np.float64)
      np.testing.assert_allclose(s.video_2d[i], frames.reshape(10, 8, -1).mean(1), rtol=1e-6)
      assert np.flatnonzero(s.labels[i]).tolist() == sorted(
          CLASS_INDEX[n] for n in labels.split(','))
      if split == 'train':
        assert s.gt_a is None and s.gt_v is None and not s.has_dense_truth
      else:
        assert s.gt_a.dtype == s.gt_v.dtype == np.bool_
        np.testing.assert_array_equal(s.gt_a[i], _gt(clip, 'gt_a'), err_msg=clip)
        np.testing.assert_array_equal(s.gt_v[i], _gt(clip, 'gt_v'), err_msg=clip)


def _build_files(tfds_dir: Path) -> dict[str, int]:
  return {str(p): p.stat().st_mtime_ns for p in tfds_dir.rglob('*') if p.is_file()}


def _completed_builds(tfds_dir: Path) -> list[Path]:
  return list(tfds_dir.rglob('dataset_info.json'))


def test_round_trip(release):
  config, written = release
  _check(load_splits(config.data), written)
  builds = _completed_builds(Path(config.data.dir) / 'tfds')
  assert len(builds) == 1 and builds[0].parent.name == '1.0.0'


def test_second_load_does_not_rebuild(release, monkeypatch):
  config, written = release
  load_splits(config.data)
  files = _build_files(Path(config.data.dir) / 'tfds')

  def no_generation(*args):
    raise AssertionError('rebuilt')

  monkeypatch.setattr(llp.LlpBuilder, '_generate_examples', no_generation)
  _check(load_splits(config.data), written)
  assert _build_files(Path(config.data.dir) / 'tfds') == files


def test_separate_feature_folders_and_staleness(tmp_path):
  _write_csvs(tmp_path / 'csv')
  fields = {'audio': 'audio_dir', 'video_2d': 'video_dir', 'video_3d': 'st_dir'}
  first = {f: tmp_path / 'a' / d for f, d in FOLDERS.items()}
  second = {f: tmp_path / 'b' / d for f, d in FOLDERS.items()}
  written = {0: _write_features(first, seed=0), 1: _write_features(second, seed=1)}
  tfds_dir = tmp_path / 'builds'
  for seed, dirs in ((0, first), (1, second)):
    config = _config(tmp_path / 'csv', tfds_dir=tfds_dir,
                     **{fields[f]: folder for f, folder in dirs.items()})
    _check(load_splits(config.data), written[seed])  # Never the stale build of the other.
  assert len(_completed_builds(tfds_dir)) == 2
  assert not (tmp_path / 'csv' / 'tfds').exists()


def test_edited_annotations_get_a_new_build(release):
  config, written = release
  load_splits(config.data)
  edited = {**SPLITS, 'train': {**SPLITS['train'], 'defghijklmn_0_10': 'Accordion'}}
  _write_csvs(Path(config.data.dir), splits=edited)
  labels = load_splits(config.data)['train'].labels
  assert np.flatnonzero(labels[3]).tolist() == [CLASS_INDEX['Accordion']]
  assert len(_completed_builds(Path(config.data.dir) / 'tfds')) == 2


def test_pre_averaging_is_exact_for_an_affine_map():
  rng = np.random.default_rng(0)
  frames = rng.normal(size=(80, 64))
  w, b = rng.normal(size=(64, 16)), rng.normal(size=16)
  per_frame = (frames @ w + b).reshape(10, 8, 16).mean(1)
  pre_averaged = frames.reshape(10, 8, 64).mean(1) @ w + b
  np.testing.assert_allclose(per_frame, pre_averaged, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(llp.segment_mean(frames.astype(np.float32)),
                             frames.astype(np.float32).astype(np.float64).reshape(10, 8, 64)
                             .mean(1), rtol=1e-6)


def _nan(x):
  x[3, 7] = np.nan
  x[0, 0] = np.nan
  return x


def _inf(x):
  x[9, 1] = -np.inf
  return x


@pytest.mark.parametrize('field, corrupt, what', [
    ('video_2d', None, 'not found'),
    ('audio', b'not an array', 'not a readable .npy array'),
    ('audio', lambda x: x[:9], 'shape (9, 128), expected (10, 128)'),
    ('video_3d', lambda x: x.astype(np.float64), 'dtype float64, expected float32'),
    ('audio', lambda x: x.astype(np.int32), 'dtype int32, expected float32'),
    ('video_2d', _nan, '2 NaN and 0 inf values'),
    ('video_3d', _inf, '0 NaN and 1 inf values'),
])
def test_bad_feature_file(release, field, corrupt, what):
  config, written = release
  clip = 'ijklmno_pqr_0_10'  # A val clip: train was already written when it fails.
  path = Path(config.data.dir) / FOLDERS[field] / 'ijklmno_pqr.npy'
  if corrupt is None:
    path.unlink()
  elif isinstance(corrupt, bytes):
    path.write_bytes(corrupt)
  else:
    np.save(path, corrupt(written[clip][field].copy()))
  with pytest.raises(llp.FeatureError,
                     match=f'{re.escape(str(path))}.*{re.escape(repr(clip))}.*{re.escape(what)}'):
    load_splits(config.data)
  tfds_dir = Path(config.data.dir) / 'tfds'
  assert not _completed_builds(tfds_dir)
  assert not [p for p in tfds_dir.rglob('incomplete*')]
  np.save(path, written[clip][field])
  _check(load_splits(config.data), written)


@pytest.mark.parametrize('splits, audio_rows, file, clip, what', [
    (SPLITS, AUDIO_ROWS + [('jklmnopqrst_0_10', 4, 11, 'Speech')], 'AVVP_eval_audio.csv',
     'jklmnopqrst_0_10', 'offset 11 is outside 0..10'),
    ({**SPLITS, 'test': {**SPLITS['test'], 'abcdefghijk_0_10': 'Dog'}}, AUDIO_ROWS,
     'AVVP_test_pd.csv', 'abcdefghijk_0_10', 'a clip can be in one split only'),
])
def test_bad_annotations_reach_the_user(release, splits, audio_rows, file, clip, what):
  config, _ = release
  _write_csvs(Path(config.data.dir), splits=splits, audio_rows=audio_rows)
  path = os.path.join(config.data.dir, file)
  with pytest.raises(annotations.AnnotationError,
                     match=f'^{re.escape(path)}.*{re.escape(repr(clip))}.*{re.escape(what)}'):
    load_splits(config.data)
  assert not _completed_builds(Path(config.data.dir) / 'tfds')


def test_dense_row_warnings(release, caplog):
  config, _ = release
  with caplog.at_level(logging.WARNING):
    load_splits(config.data)
  messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith('LLP:')]
  assert len(messages) == 2 and all('\n' not in m for m in messages)
  empty, unknown = messages
  assert empty.startswith('LLP: 1 dense annotation rows mark nothing')
  assert 'AVVP_eval_audio.csv: ghijklmnopq_0_10 (line 4)' in empty
  assert unknown.startswith('LLP: 1 dense annotation rows name clips in neither val nor test')
  assert 'zzzzzzzzzzz_0_10 (line 8)' in unknown
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    load_splits(config.data)  # Reported when building only.
  assert not [r for r in caplog.records if r.getMessage().startswith('LLP:')]


def test_missing_inputs(tmp_path):
  with pytest.raises(ValueError, match='config.data.dir must name'):
    load_splits(_config('').data)
  _write_csvs(tmp_path)
  os.remove(tmp_path / 'AVVP_eval_visual.csv')
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / 'AVVP_eval_visual.csv'))):
    load_splits(_config(tmp_path).data)
  _write_csvs(tmp_path)
  with pytest.raises(FileNotFoundError, match=r'vggish: feature folder \(config.data.audio_dir\)'):
    load_splits(_config(tmp_path).data)


REAL_CSVS = Path(__file__).resolve().parents[2] / 'shared' / 'llp'


@pytest.mark.skipif(not REAL_CSVS.is_dir(), reason='the real LLP annotation files are not here')
def test_real_annotation_rows_in_the_release_layout(tmp_path):
  """Rows of the real annotation files, verbatim, with generated features in DIR/feats/<name>
  (the layout of the reference repositories): `config.data.dir` alone loads them."""
  take = {'train': 6, 'val': 5, 'test': 5}
  clips = {}
  for split, file in llp.SPLIT_FILES.items():
    lines = (REAL_CSVS / file).read_text().splitlines(keepends=True)
    (tmp_path / file).write_text(''.join(lines[:1 + take[split]]))
    clips[split] = [line.split('\t') for line in lines[1:1 + take[split]]]
  dense_clips = {name for split in ('val', 'test') for name, _ in clips[split]}
  dense = {}
  for field, file in llp.DENSE_FILES.items():
    lines = (REAL_CSVS / file).read_text().splitlines(keepends=True)
    rows = [line for line in lines[1:] if line.split('\t')[0] in dense_clips]
    (tmp_path / file).write_text(lines[0] + ''.join(rows))
    dense[field] = [line.rstrip('\n').split('\t') for line in rows]
  assert dense['gt_a'] and dense['gt_v']
  all_clips = {name: None for split in clips.values() for name, _ in split}
  rng = np.random.default_rng(0)
  for field, folder in FOLDERS.items():
    (tmp_path / 'feats' / folder).mkdir(parents=True)
    for name in all_clips:
      np.save(tmp_path / 'feats' / folder / f'{name[:11]}.npy',
              rng.normal(size=SHAPES[field]).astype(np.float32))

  splits = load_splits(_config(tmp_path).data)
  for split, rows in clips.items():
    s = splits[split]
    assert s.names.tolist() == [name for name, _ in rows]
    for i, (name, labels) in enumerate(rows):
      assert np.flatnonzero(s.labels[i]).tolist() == sorted(
          CLASS_INDEX[n] for n in labels.strip().split(','))
      np.testing.assert_array_equal(
          s.audio[i], np.load(tmp_path / 'feats' / 'vggish' / f'{name[:11]}.npy'))
  for field in ('gt_a', 'gt_v'):
    want = {split: np.zeros((len(clips[split]), NUM_CLASSES, NUM_SEGMENTS), bool)
            for split in ('val', 'test')}
    for name, onset, offset, label in dense[field]:
      for split in want:
        names = [n for n, _ in clips[split]]
        if name in names:
          want[split][names.index(name), CLASS_INDEX[label], int(onset):int(offset)] = True
    for split in want:
      np.testing.assert_array_equal(getattr(splits[split], field), want[split], err_msg=field)


def test_features_in_both_layouts_are_refused(release):
  config, _ = release
  (Path(config.data.dir) / 'feats' / 'res152').mkdir(parents=True)
  with pytest.raises(ValueError, match=r'Both .*llp/res152 and .*llp/feats/res152 exist: set '
                                       r'config.data.video_dir'):
    load_splits(config.data)


def test_a_folder_of_clips_without_its_feature_folders_is_a_clear_error(tmp_path):
  with pytest.raises(llp.FeatureError, match=r'vggish: no such folder; expected the release'):
    llp.read_feature_folder(str(tmp_path))
  (tmp_path / 'vggish').mkdir()
  with pytest.raises(llp.FeatureError, match=r'vggish: no \.npy feature files'):
    llp.read_feature_folder(str(tmp_path))
  np.save(tmp_path / 'vggish' / 'clipA.npy', np.zeros((10, 128), np.float32))
  with pytest.raises(llp.FeatureError, match=r"res152/clipA.npy: feature file of clip 'clipA' "
                                             'not found'):
    llp.read_feature_folder(str(tmp_path))
