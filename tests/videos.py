"""Small videos that tests write with PyAV: a frame counter drawn as 10 bars (bit b of the
frame's index lights bar b), a moving square and a 440-Hz tone."""

from fractions import Fraction

import av
import numpy as np

WIDTH, HEIGHT = 256, 224
BAR = 25  # Pixels per bar: wide enough to survive the codec and a resize to 112.


def counter_image(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
  """(height, width, 3) uint8 RGB with frame `index` drawn in."""
  img = np.zeros((height, width, 3), np.uint8)
  for b in range(10):
    if (index >> b) & 1:
      img[:height // 2, b * BAR:(b + 1) * BAR] = 255
  x = (7 * index) % max(width - 40, 1)
  img[height * 3 // 5:height * 3 // 5 + 40, x:x + 40] = (220, 60, 40)
  return img


def read_counter(img: np.ndarray) -> int:
  """The index drawn by `counter_image` in a decoded (H, W, 3) frame of the same size."""
  height = img.shape[0]
  bars = img[:height // 2, :10 * BAR].reshape(height // 2, 10, BAR, 3).mean((0, 2, 3)) > 128
  return int((bars * (1 << np.arange(10))).sum())


def write_video(path: str, seconds: float, fps=24, *, audio: bool = True,
                video: bool = True, size=(WIDTH, HEIGHT), times=None,
                audio_seconds: float | None = None) -> None:
  """An mp4 (MPEG-4 video, AAC audio at 44.1 kHz stereo). `times`: explicit frame times
  (s) for a variable frame rate, instead of `seconds * fps` evenly spaced frames."""
  out = av.open(path, 'w')
  streams = []
  if video:
    rate = Fraction(fps).limit_denominator(1001)
    vstream = out.add_stream('mpeg4', rate=rate)
    vstream.width, vstream.height, vstream.pix_fmt = size[0], size[1], 'yuv420p'
    vstream.bit_rate = 2_000_000
    if times is not None:
      vstream.codec_context.time_base = Fraction(1, 1000)
  if audio:
    astream = out.add_stream('aac', rate=44100)
    astream.layout = 'stereo'
  if video:
    frame_times = (np.arange(int(round(seconds * fps))) / fps if times is None
                   else np.asarray(times))
    for i, t in enumerate(frame_times):
      frame = av.VideoFrame.from_ndarray(counter_image(i, *size), format='rgb24')
      if times is not None:
        frame.pts, frame.time_base = int(round(t * 1000)), Fraction(1, 1000)
      streams.extend(vstream.encode(frame))
    streams.extend(vstream.encode())
  if audio:
    total = int((audio_seconds if audio_seconds is not None else seconds) * 44100)
    for start in range(0, total, 1024):
      n = np.arange(start, min(start + 1024, total))
      x = (0.3 * np.sin(2 * np.pi * 440 * n / 44100) * 32767).astype(np.int16)
      frame = av.AudioFrame.from_ndarray(np.stack([x, x]).reshape(1, -1), format='s16',
                                         layout='stereo')
      frame.sample_rate, frame.pts = 44100, start
      streams.extend(astream.encode(frame))
    streams.extend(astream.encode())
  for packet in streams:
    out.mux(packet)
  out.close()
