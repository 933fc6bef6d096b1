"""From a folder of videos to events: launch/extract.py and parse.py --videos on videos the
tests write, with random weights (the pretrained files are not here): the release layout,
bad videos reported while the others go on, resume by skipping, the random-weights mark on
everything written, and the refusal to run without weights."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from avvp_jax import pipeline
from avvp_jax.extract import extractor
from configs import ma
from tests.videos import write_video

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOOD = ('variable_rate',)  # One good video: the extraction of each costs seconds.
BAD = {'silent.mp4': 'no audio stream', 'tiny.mp4': 'smaller than the 224-pixel crop',
       'broken.mp4': 'cannot be decoded'}


def _launch(script, *flags, check=True):
  result = subprocess.run([sys.executable, str(ROOT / 'launch' / script), *flags], cwd=ROOT,
                          capture_output=True, text=True)
  if check and result.returncode:
    raise AssertionError(result.stdout + result.stderr)
  return result


@pytest.fixture(scope='module')
def videos(tmp_path_factory):
  folder = tmp_path_factory.mktemp('videos')
  times = np.cumsum(np.r_[0, np.tile([1 / 30, 1 / 30, 0.15], 120)])
  write_video(str(folder / 'variable_rate.mkv'), 11, times=times[times < 10.6])
  write_video(str(folder / 'silent.mp4'), 10.5, audio=False)
  write_video(str(folder / 'tiny.mp4'), 10.5, size=(160, 128))
  (folder / 'broken.mp4').write_bytes(b'\x00' * 4096)
  (folder / 'notes.txt').write_text('not a video')
  return folder


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  config = ma.get_config('cr')
  config.update_from_flattened_dict({
      'model.d_model': 32, 'model.ffn_dim': 32, 'data.synthetic.num_train': 32,
      'data.synthetic.num_val': 8, 'data.synthetic.num_test': 8, 'train.epochs': 1,
      'refine.enabled': False, 'plots': False})
  workdir = tmp_path_factory.mktemp('run') / 'run'
  pipeline.run(config, str(workdir))
  return workdir / 'base' / 'checkpoints'


def test_extract_refuses_without_weights_and_says_where_each_comes_from(tmp_path, videos):
  result = _launch('extract.py', f'--videos={videos}', f'--out={tmp_path / "out"}',
                   f'--weights={tmp_path}', check=False)
  assert result.returncode != 0
  for net in extractor.NETWORKS.values():
    assert net.weights in result.stderr + result.stdout
  assert 'torchvision' in result.stderr and not (tmp_path / 'out').exists()


def test_parse_videos_writes_events_and_pictures_and_resumes(tmp_path, videos, checkpoint):
  out = tmp_path / 'parsed'
  flags = (f'--checkpoint={checkpoint}', f'--videos={videos}', f'--out={out}',
           '--random_weights')
  first = _launch('parse.py', *flags, check=False)
  printed = first.stdout + first.stderr
  assert first.returncode == 1, printed  # Some videos failed: the exit status says so.
  assert 'videos: 1 extracted, 0 already there, 3 failed' in printed
  for name, why in BAD.items():
    assert f'{videos / name}: ' in printed and why in printed, name
  assert f'warning: {videos / "variable_rate.mkv"}: variable frame rate' in printed
  assert extractor.RANDOM_NOTE in printed

  features = out / 'features'
  for name in GOOD:
    for net, spec in extractor.NETWORKS.items():
      x = np.load(features / net / f'{name}.npy')
      assert x.shape == spec.feature_shape and x.dtype == np.float32
      assert np.isfinite(x).all() and x.std() > 0
    assert (out / 'timelines' / f'{name}.png').read_bytes()[:4] == b'\x89PNG'
  assert sorted(os.listdir(features / 'vggish')) == [f'{n}.npy' for n in GOOD]
  parsed = json.loads((out / 'events.json').read_text())
  assert parsed['num_clips'] == 1 and parsed['features']['weights'] == 'random'
  assert parsed['features']['note'] == extractor.RANDOM_NOTE
  header = 'filename\tonset\toffset\tevent_labels'
  for m in ('audio', 'visual'):
    assert (out / f'events_{m}.csv').read_text().splitlines()[0] == header

  # Again: the extracted videos are skipped, not rewritten; the events are the same.
  stamps = {p: p.stat().st_mtime_ns for p in features.rglob('*.npy')}
  events = (out / 'events.json').read_text()
  second = _launch('parse.py', *flags, check=False)
  assert 'videos: 0 extracted, 1 already there, 3 failed' in second.stdout + second.stderr
  assert {p: p.stat().st_mtime_ns for p in features.rglob('*.npy')} == stamps
  assert (out / 'events.json').read_text() == events

  # The same folder through --features gives the same events.
  _launch('parse.py', f'--checkpoint={checkpoint}', f'--features={features}',
          f'--out={tmp_path / "again"}')
  assert (json.loads((tmp_path / 'again' / 'events.json').read_text())['events']
          == parsed['events'])


def test_a_folder_holds_features_of_one_set_of_weights(tmp_path):
  extractor.open_manifest(str(tmp_path), 'random', 0.0)
  extractor.open_manifest(str(tmp_path), 'random', 0.0)
  with pytest.raises(SystemExit, match='holds features of weights random'):
    extractor.open_manifest(str(tmp_path), '0123abcd', 0.0)
  with pytest.raises(SystemExit, match='from 0.0 s'):
    extractor.open_manifest(str(tmp_path), 'random', 2.0)


def test_weights_are_read_from_pytorch_files_and_cached(tmp_path):
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  states = {}
  for name, net in extractor.NETWORKS.items():
    states[name] = {'features.0.weight': rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                    'features.0.bias': rng.standard_normal(4).astype(np.float32),
                    'fc.weight': rng.standard_normal((2, 4)).astype(np.float32)}
    torch.save({k: torch.from_numpy(v) for k, v in states[name].items()},
               tmp_path / net.weights)
  assert extractor.missing_weights(str(tmp_path)) == []
  loaded = extractor.load_weights(str(tmp_path))
  for name, net in extractor.NETWORKS.items():
    kernel = loaded[name]['params']['features_0']['kernel']
    np.testing.assert_array_equal(kernel, states[name]['features.0.weight'].transpose(2, 3, 1, 0))
    assert os.path.exists(tmp_path / (net.weights + '.flax.npz'))
  # The cache gives the same variables, and the same digest, without PyTorch's files read.
  for net in extractor.NETWORKS.values():
    (tmp_path / net.weights).write_bytes(b'')
    os.utime(tmp_path / net.weights, (0, 0))
  cached = extractor.load_weights(str(tmp_path))
  assert extractor.weights_digest(cached) == extractor.weights_digest(loaded)
