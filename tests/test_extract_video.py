"""Decoding a clip as the release's scripts did, on videos the tests write: which source
frame each of the 80 ResNet-152 frames and 10 R(2+1)D-18 clips takes, against the
`ffmpeg -ss S -t 10 -i video -r 8` command of the reference scripts (the ffmpeg binary that
imageio-ffmpeg ships); the audio against ffmpeg's decode; every bad video refused with its
file named."""

import glob
import subprocess

import av
import numpy as np
import pytest
from PIL import Image

from avvp_jax.extract import video
from tests.videos import read_counter, write_video

imageio_ffmpeg = pytest.importorskip('imageio_ffmpeg')


def _ffmpeg(*args) -> bytes:
  return subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-loglevel', 'error', *args],
                        check=True, capture_output=True).stdout


def _reference_frames(path, start, tmp_path) -> np.ndarray:
  """The counters of the 80 frames the reference scripts take: `ffmpeg -r 8` into images,
  then `np.round(np.linspace(0, N - 1, 80))` of them (extract_rgb_feat.py)."""
  folder = tmp_path / f'frames_{start}'
  folder.mkdir()
  _ffmpeg('-ss', str(start), '-t', '10', '-i', str(path), '-y', '-r', '8',
          str(folder / '%06d.png'))
  files = sorted(glob.glob(str(folder / '*.png')))
  counters = np.array([read_counter(np.asarray(Image.open(f).convert('RGB'))) for f in files])
  return counters[np.round(np.linspace(0, len(files) - 1, 80)).astype(int)]


@pytest.mark.parametrize('fps,start', [(24, 0.0), (30000 / 1001, 0.0), (25, 1.5)])
def test_frames_are_the_reference_scripts_frames(tmp_path, fps, start):
  path = tmp_path / 'clip.mp4'
  write_video(str(path), start + 10.5, fps, audio=False)
  want = _reference_frames(path, start, tmp_path)
  with av.open(str(path)) as container:
    frames, times, variable = video._frames(str(path), container, start)  # pylint: disable=protected-access
  got = np.array([read_counter(f) for f in frames])
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(times, got / fps - start, atol=1e-3)
  assert variable is None
  # The rule is not "the frame on screen at start + k / 8": ffmpeg's first frames differ.
  on_screen = np.floor((start + np.arange(80) / 8) * fps + 1e-6).astype(int)
  assert not np.array_equal(got, on_screen)


def test_variable_frame_rate_follows_ffmpeg_and_is_reported(tmp_path):
  rng = np.random.default_rng(0)
  times = np.cumsum(np.r_[0, rng.choice([1 / 30, 1 / 10, 0.2], size=160)])
  path = tmp_path / 'vfr.mp4'
  write_video(str(path), times[-1], times=times[times < 11.0], audio=False)
  want = _reference_frames(path, 0.0, tmp_path)
  with av.open(str(path)) as container:
    frames, _, variable = video._frames(str(path), container, 0.0)  # pylint: disable=protected-access
  np.testing.assert_array_equal([read_counter(f) for f in frames], want)
  assert variable is not None and variable[1] > 5 * variable[0]


def test_r2plus1d_clips_are_eight_consecutive_release_frames():
  frames = np.stack([np.full((224, 256, 3), k, np.uint8) for k in range(80)])
  clips = video.r2plus1d_input(frames)
  assert clips.shape == (10, 8, 112, 112, 3)
  np.testing.assert_array_equal(clips[:, :, 50, 50, 0], np.arange(80).reshape(10, 8))


def test_resnet_input_is_resize_256_then_centre_crop_224():
  img = np.zeros((1, 300, 400, 3), np.uint8)
  img[:, :, 200:] = 255  # Right half white: after the resize 256 x 341 and crop at 58.
  out = video.resnet_input(img)
  assert out.shape == (1, 224, 224, 3)
  assert out[0, 0, :110].max() == 0 and out[0, 0, 120:].min() == 255


@pytest.mark.parametrize('start', [0.0, 1.5])
def test_audio_is_ffmpegs_decode_from_start_at_16_khz(tmp_path, start):
  path = tmp_path / 'clip.mp4'
  write_video(str(path), start + 10.5, 24)
  decoded = np.frombuffer(_ffmpeg('-i', str(path), '-f', 's16le', '-ac', '2', '-ar', '44100',
                                  '-'), np.int16).reshape(-1, 2)
  clip = video.decode(str(path), start)
  offset = int(round(start * 44100))
  index = offset + np.round(np.arange(160000) * 44100 / 16000).astype(int)
  want = np.trunc(np.clip(decoded[index] / 32768.0, -0.99, 0.99) * 32768.0).mean(1) / 32768.0
  assert clip.audio.shape == (160000,)
  np.testing.assert_array_equal(clip.audio, want)
  assert np.abs(clip.audio).max() > 0.1


def _truncated(path):
  data = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 3])


BAD = {
    'no_audio.mp4': (dict(seconds=10.5, audio=False), 'no audio stream'),
    'no_video.mp4': (dict(seconds=10.5, video=False), 'no video stream'),
    'short_video.mp4': (dict(seconds=6.0), r'video ends at 6\.00 s, shorter than'),
    'short_audio.mp4': (dict(seconds=10.5, audio_seconds=5.0), r'audio lasts .* shorter than'),
    'small.mp4': (dict(seconds=10.5, size=(160, 128)), 'smaller than the 224-pixel crop'),
}


@pytest.mark.parametrize('name', sorted(BAD) + ['garbage.mp4', 'truncated.mp4'])
def test_bad_videos_are_refused_naming_the_file(tmp_path, name):
  path = str(tmp_path / name)
  if name == 'garbage.mp4':
    open(path, 'wb').write(b'not a video at all' * 100)
    match = 'cannot be decoded'
  elif name == 'truncated.mp4':
    write_video(path, 10.5)
    _truncated(path)
    match = 'cannot be decoded|could not be decoded|shorter than'
  else:
    kwargs, match = BAD[name]
    write_video(path, **kwargs)
  with pytest.raises(video.VideoError, match=match) as e:
    video.decode(path)
  assert str(e.value).startswith(path)
