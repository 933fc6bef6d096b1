"""Segment pseudo labels (VALOR): the loader on small written folders, every bad case
refused with the file and the clip, and the labels that the built-in data simulates."""

import os

import numpy as np
import pytest

from avvp_jax.data import Split, pseudo_labels, synthetic

NAMES = np.array(['abcdefghijk_0_10', 'lmnopqrstuv_30_40'])


def _split():
  labels = np.zeros((2, 25), np.float32)
  labels[0, [0, 3]] = 1
  labels[1, 7] = 1
  z = np.zeros((2, 10, 1), np.float32)
  return Split(names=NAMES, audio=z, video_2d=z, video_3d=z, labels=labels)


def _write(folder, arrays):
  os.makedirs(folder, exist_ok=True)
  for name, x in zip(NAMES, arrays):
    np.save(os.path.join(folder, name[:11] + '.npy'), x)


def _good():
  a = np.zeros((2, 10, 25), np.float32)
  a[0, 2:5, 0] = 1
  a[0, 0, 3] = 0.7
  a[1, :, 7] = 1
  return a


def test_a_folder_in_valors_layout_loads_clip_by_clip(tmp_path):
  _write(tmp_path / 'clap', _good())
  np.testing.assert_array_equal(pseudo_labels.load_folder(str(tmp_path / 'clap'), _split()),
                                _good())


def _bad(case):
  x = _good()
  if case == 'nan':
    x[1, 3, 7] = np.nan
  elif case == 'range':
    x[0, 1, 0] = 1.5
  elif case == 'outside':
    x[1, 4, 12] = 1
  return x


@pytest.mark.parametrize('case, message', [
    ('missing', r"lmnopqrstuv\.npy: pseudo-label file of clip 'lmnopqrstuv_30_40' not found"),
    ('shape', r"abcdefghijk\.npy: clip 'abcdefghijk_0_10': shape \(25, 10\), expected \(10, 25\)"),
    ('nan', r"lmnopqrstuv\.npy: clip 'lmnopqrstuv_30_40': 1 NaN or inf values"),
    ('range', r"abcdefghijk\.npy: clip 'abcdefghijk_0_10': values in \[0\.0, 1\.5\], outside"),
    ('outside', r"lmnopqrstuv\.npy: clip 'lmnopqrstuv_30_40': positive for class indices \[12\],"
                r" which are not among its weak labels \[7\]"),
    ('unreadable', r"abcdefghijk\.npy: clip 'abcdefghijk_0_10': not a readable \.npy array"),
])
def test_every_bad_file_is_refused_naming_the_file_and_the_clip(tmp_path, case, message):
  folder = tmp_path / 'clip'
  _write(folder, _bad(case))
  if case == 'missing':
    os.remove(folder / 'lmnopqrstuv.npy')
  elif case == 'shape':
    np.save(folder / 'abcdefghijk.npy', np.zeros((25, 10), np.float32))
  elif case == 'unreadable':
    (folder / 'abcdefghijk.npy').write_bytes(b'not an array')
  with pytest.raises(pseudo_labels.PseudoLabelError, match=message):
    pseudo_labels.load_folder(str(folder), _split())


def test_simulated_labels_keep_to_the_weak_labels_at_the_configured_rates():
  split = synthetic.generate_split(400, 0, 'train')
  rates = {'audio_miss': 0.2, 'audio_false_alarm': 0.1,
           'visual_miss': 0.0, 'visual_false_alarm': 0.0}
  out = pseudo_labels.simulate(split, rates, seed=0)
  weak = split.labels > 0
  for m, gt in (('audio', split.gt_a), ('visual', split.gt_v)):
    assert out[m].shape == (400, 10, 25)
    assert not out[m][np.broadcast_to(~weak[:, None], out[m].shape)].any(), m
    truth = np.swapaxes(gt, 1, 2) & weak[:, None]
    inside = np.broadcast_to(weak[:, None], truth.shape)
    miss = 1 - out[m][truth].mean()
    false_alarm = out[m][inside & ~truth].mean()
    assert miss == pytest.approx(rates[f'{m}_miss'], abs=0.02), m
    assert false_alarm == pytest.approx(rates[f'{m}_false_alarm'], abs=0.02), m
  quality = pseudo_labels.quality(out, split)
  assert quality['visual/precision'] == quality['visual/recall'] == 100.0
  assert quality['audio/recall'] == pytest.approx(80, abs=2)
