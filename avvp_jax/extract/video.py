"""Decoding one 10-second clip of a video file (PyAV) the way the LLP release's scripts did.

AVVP-ECCV20's scripts (`scripts/download_dataset.py`, `extract_audio.py`,
`extract_frames.py`, `extract_rgb_feat.py`, `extract_3D_feat.py`) trim 10 s with ffmpeg,
then:
- audio: moviepy decodes it at 44.1 kHz stereo int16 and writes a 16-kHz WAV by taking the
  sample nearest each 16-kHz instant (`round(44100 t)`), clipped to +-0.99 of full scale;
  VGGish reads it as int16 / 32768 and averages the channels (`samples_16k`);
- frames: `ffmpeg -i clip -r 8` writes the clip's frames at a constant 8 fps by its
  constant-frame-rate sync (about 82 frames for 10 s, the first three the clip's first
  three frames), and `extract_rgb_feat.py` takes 80 of them,
  `np.round(np.linspace(0, N - 1, 80))`. `cfr_indices` and `release_frames` repeat that
  choice from the frames' timestamps; a variable frame rate goes through the same rule;
- ResNet-152 input: resize the shorter side to 256 (PIL bilinear), centre crop 224;
  R(2+1)D-18 input: resize to 112 x 112 (aspect not kept), clip k = frames 8k .. 8k + 7.
The release went through JPEG files between ffmpeg and the networks; this decoder does not.

Policies for bad input (`VideoError` names the file): no audio or no video stream, less
than `start + 10` s of either, an undecodable file, and frames whose shorter side is under
the 224-pixel crop are refused. A variable frame rate is accepted and reported.
"""

import dataclasses

import av
import numpy as np
from PIL import Image

CLIP_SECONDS = 10
FPS = 8
NUM_FRAMES = CLIP_SECONDS * FPS  # 80 ResNet-152 frames, 8 per R(2+1)D clip.
DECODE_RATE = 44100  # moviepy's default audio rate.
SAMPLE_RATE = 16000
FULL_SCALE_CLIP = 0.99  # moviepy's `to_soundarray(quantize=True)`.
RESIZE_SHORT_SIDE = 256
CROP = 224
CLIP_SIZE = 112
# Frame intervals further apart than this ratio mark a variable frame rate.
VARIABLE_RATE_RATIO = 1.5


class VideoError(ValueError):
  """A video that cannot give a clip; the message names the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Clip:
  """One decoded clip.

  Attributes:
    audio: float64 (160000,) 16-kHz mono samples in [-1, 1].
    frames: uint8 (80, H, W, 3) RGB, the release's 80 frames (`release_frames`).
    frame_times: float64 (80,) their times (s) from the clip's start.
    variable_rate: None, or the (shortest, longest) source frame interval (s) where they
      differ by more than VARIABLE_RATE_RATIO.
  """
  audio: np.ndarray
  frames: np.ndarray
  frame_times: np.ndarray
  variable_rate: tuple[float, float] | None


def samples_16k(decoded: np.ndarray) -> np.ndarray:
  """(S, 2) int16 samples at 44.1 kHz from the clip's start -> (160000,) float64 mono at
  16 kHz, as moviepy's WAV and VGGish's reader make it."""
  index = np.round(DECODE_RATE * np.arange(CLIP_SECONDS * SAMPLE_RATE) / SAMPLE_RATE)
  x = decoded[index.astype(np.int64)].astype(np.float64) / 32768.0
  x = np.trunc(np.clip(x, -FULL_SCALE_CLIP, FULL_SCALE_CLIP) * 32768.0) / 32768.0
  return x.mean(axis=1)


def _audio(path: str, container, start: float) -> np.ndarray:
  """(S, 2) int16 at 44.1 kHz from `start` to the end of the stream."""
  stream = container.streams.audio[0]
  # Decoded from the stream's start: after a seek, AAC's first frames decode slightly
  # differently (up to 5e-4 of full scale here); audio decoding is cheap beside video's.
  resampler = av.AudioResampler(format='s16', layout='stereo', rate=DECODE_RATE)
  chunks, first = [], None
  for frame in container.decode(stream):
    if first is None:
      first = float(frame.time or 0.0)
    for out in resampler.resample(frame):
      chunks.append(out.to_ndarray().reshape(-1, 2))
  for out in resampler.resample(None):
    chunks.append(out.to_ndarray().reshape(-1, 2))
  if not chunks:
    raise VideoError(f'{path}: its audio stream has no decodable samples.')
  samples = np.concatenate(chunks)
  # Samples before the stream's first timestamp are silence, as ffmpeg's trim gives them.
  offset = int(round((start - first) * DECODE_RATE))
  if offset < 0:
    samples = np.concatenate([np.zeros((-offset, 2), np.int16), samples])
    offset = 0
  needed = int(round(DECODE_RATE * (CLIP_SECONDS * SAMPLE_RATE - 1) / SAMPLE_RATE)) + 1
  if len(samples) - offset < needed:
    raise VideoError(f'{path}: its audio lasts {first + len(samples) / DECODE_RATE:.2f} s, '
                     f'shorter than --start {start:g} s + {CLIP_SECONDS} s; clips are not '
                     'padded.')
  return samples[offset:]


def cfr_indices(times: np.ndarray, durations: np.ndarray) -> np.ndarray:
  """Which input frame fills each output frame of `ffmpeg -i clip -r 8`: ffmpeg's
  constant-frame-rate sync (`video_sync_process`, VSYNC_CFR), which emits each input frame
  once, drops it when it falls more than 1.1 output frames behind, and repeats frames
  across gaps of more than 1.1 output frames.

  Args:
    times: (F,) presentation times (s) of the clip's frames from its start, increasing.
    durations: (F,) their durations (s).
  Returns:
    (N,) int indices into `times`, one per 8-fps output frame.
  """
  out, next_pts = [], 0
  for i, (t, d) in enumerate(zip(times * FPS, durations * FPS)):
    delta0 = t - next_pts  # How far this frame is ahead of the next output slot.
    delta = delta0 + d
    if delta0 < 0 < delta:
      delta0 = 0.0
    count, previous = 1, 0
    if delta < -1.1:
      count = 0
    elif delta > 1.1:
      count = int(np.rint(delta))
      if delta0 > 1.1:
        previous = int(np.rint(delta0 - 0.6))
    out += [i - 1] * previous + [i] * (count - previous)
    next_pts += count
  return np.array(out, dtype=np.int64)


def release_frames(times: np.ndarray, durations: np.ndarray) -> np.ndarray:
  """(80,) indices into the clip's frames of the 80 frames the release's ResNet-152 and
  R(2+1)D-18 saw: the `-r 8` frames (`cfr_indices`), N of them (about 82 for 10 s), of
  which `extract_rgb_feat.py` takes `np.round(np.linspace(0, N - 1, 80))`."""
  written = cfr_indices(times, durations)
  return written[np.round(np.linspace(0, len(written) - 1, NUM_FRAMES)).astype(np.int64)]


def _frames(path: str, container, start: float):
  """(frames (80, H, W, 3) uint8, their times in the clip (80,), variable_rate)."""
  stream = container.streams.video[0]
  base = float(stream.time_base)
  # Timestamps from the packets (no decoding): the clip is [start, start + 10), as
  # `ffmpeg -ss start -i video -t 10` cut it.
  packets = sorted((p.pts, p.duration) for p in container.demux(stream) if p.pts is not None)
  if not packets:
    raise VideoError(f'{path}: its video stream has no frames.')
  pts = np.array([p for p, _ in packets], np.int64)
  times = pts * base - start
  end = times[-1] + (packets[-1][1] or 0) * base
  if end < CLIP_SECONDS - 1e-6:
    raise VideoError(f'{path}: its video ends at {end + start:.2f} s, shorter than --start '
                     f'{start:g} s + {CLIP_SECONDS} s; clips are not padded.')
  inside = (times >= -1e-9) & (times < CLIP_SECONDS - 1e-9)
  pts, times = pts[inside], times[inside]
  intervals = np.diff(times)
  durations = np.append(intervals, np.median(intervals) if len(intervals) else 1 / FPS)
  chosen = release_frames(times, durations)
  wanted = {int(pts[i]) for i in chosen}
  # Decoding starts at the keyframe before the first frame wanted.
  container.seek(int(pts[chosen].min()), stream=stream, backward=True)
  decoded = {}
  for frame in container.decode(stream):
    if frame.pts in wanted and frame.pts not in decoded:
      decoded[frame.pts] = frame.to_ndarray(format='rgb24')
      if len(decoded) == len(wanted):
        break
  if len(decoded) < len(wanted):
    raise VideoError(f'{path}: {len(wanted) - len(decoded)} of its frames could not be '
                     'decoded (a truncated file?).')
  variable = None
  if len(intervals) and intervals.max() > VARIABLE_RATE_RATIO * intervals.min():
    variable = (float(intervals.min()), float(intervals.max()))
  return np.stack([decoded[int(pts[i])] for i in chosen]), times[chosen], variable


def decode(path: str, start: float = 0.0) -> Clip:
  """The clip `[start, start + 10)` of the video at `path`. Raises VideoError."""
  try:
    with av.open(path) as container:
      if not container.streams.audio:
        raise VideoError(f'{path}: no audio stream; the audio features need one.')
      if not container.streams.video:
        raise VideoError(f'{path}: no video stream; the visual features need one.')
      frames, times, variable = _frames(path, container, start)
    with av.open(path) as container:
      audio = samples_16k(_audio(path, container, start))
  except av.FFmpegError as e:
    raise VideoError(f'{path}: cannot be decoded ({e}).') from None
  height, width = frames.shape[1:3]
  if min(height, width) < CROP:
    raise VideoError(f'{path}: its frames are {width} x {height}, smaller than the '
                     f'{CROP}-pixel crop of ResNet-152; the release did not upscale.')
  return Clip(audio, frames, times, variable)


def resnet_input(frames: np.ndarray) -> np.ndarray:
  """(80, H, W, 3) uint8 -> (80, 224, 224, 3) uint8: shorter side to 256, centre crop."""
  height, width = frames.shape[1:3]
  # torchvision's Resize(256): the longer side is truncated, not rounded.
  long = int(RESIZE_SHORT_SIDE * max(height, width) / min(height, width))
  size = (RESIZE_SHORT_SIDE, long) if width <= height else (long, RESIZE_SHORT_SIDE)
  top, left = (int(round((size[1] - CROP) / 2)), int(round((size[0] - CROP) / 2)))
  return np.stack([
      np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR))[
          top:top + CROP, left:left + CROP] for f in frames])


def r2plus1d_input(frames: np.ndarray) -> np.ndarray:
  """(80, H, W, 3) uint8 -> (10, 8, 112, 112, 3) uint8: each frame resized to 112 x 112,
  clip k = frames 8k .. 8k + 7."""
  small = np.stack([np.asarray(Image.fromarray(f).resize((CLIP_SIZE, CLIP_SIZE),
                                                         Image.BILINEAR)) for f in frames])
  return small.reshape(CLIP_SECONDS, FPS, CLIP_SIZE, CLIP_SIZE, 3)
