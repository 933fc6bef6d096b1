"""Network inputs from decoded audio and frames, as the LLP release's extraction made them.

Audio (VGGish's own front end, AudioSet's `vggish_input.py` / `mel_features.py`):
16 kHz mono in [-1, 1] (int16 / 32768), 25 ms periodic-Hann frames every 10 ms, |FFT| on
512 points, 64 HTK-mel bands from 125 to 7500 Hz (the DC bin weighted 0), log(mel + 0.01),
then examples of 96 frames (0.96 s) without overlap. The LLP release cut its 16-kHz WAV
into whole seconds and made one example of each (AVVP-ECCV20's `vggish_input.py`): the
example of second i covers samples [16000 i, 16000 i + 15600) (`clip_examples`).

Frames: the statistics of ImageNet normalisation for ResNet-152 and Kinetics normalisation
for R(2+1)D-18 (torchvision's published values), applied on the device by
`extractor.feature_functions`; the resizing and cropping are in `video`, where the frames
are decoded.
"""

import numpy as np

SAMPLE_RATE = 16000
WINDOW_SECONDS = 0.025
HOP_SECONDS = 0.010
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s of 10-ms frames; examples do not overlap.

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
KINETICS_MEAN = np.array([0.43216, 0.394666, 0.37645], np.float32)
KINETICS_STD = np.array([0.22803, 0.22145, 0.216989], np.float32)


def hertz_to_mel(hertz):
  """HTK's mel scale."""
  return 1127.0 * np.log(1.0 + np.asarray(hertz) / 700.0)


def mel_matrix(num_spectrogram_bins: int) -> np.ndarray:
  """(num_spectrogram_bins, 64) triangular weights, linear in mel between band edges spaced
  evenly in mel; the DC bin contributes nothing."""
  bins_mel = hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, num_spectrogram_bins))
  edges = np.linspace(hertz_to_mel(MEL_MIN_HZ), hertz_to_mel(MEL_MAX_HZ), NUM_MEL_BINS + 2)
  lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
  rising = (bins_mel[:, None] - lower) / (center - lower)
  falling = (upper - bins_mel[:, None]) / (upper - center)
  weights = np.maximum(0.0, np.minimum(rising, falling))
  weights[0] = 0.0
  return weights


def log_mel(waveform: np.ndarray) -> np.ndarray:
  """(S,) 16-kHz samples in [-1, 1] -> (F, 64) log-mel frames, F = 1 + (S - 400) // 160."""
  window = int(round(WINDOW_SECONDS * SAMPLE_RATE))
  hop = int(round(HOP_SECONDS * SAMPLE_RATE))
  fft_length = 2 ** int(np.ceil(np.log2(window)))
  num_frames = 1 + (len(waveform) - window) // hop
  if num_frames < 1:
    raise ValueError(f'{len(waveform)} samples are fewer than one {window}-sample window.')
  index = hop * np.arange(num_frames)[:, None] + np.arange(window)
  hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)  # Periodic.
  spectrum = np.abs(np.fft.rfft(np.asarray(waveform, np.float64)[index] * hann, fft_length))
  return np.log(spectrum @ mel_matrix(fft_length // 2 + 1) + LOG_OFFSET)


def log_mel_examples(waveform: np.ndarray) -> np.ndarray:
  """(S,) 16-kHz samples -> (E, 96, 64) float32 VGGish examples, E = (F - 96) // 96 + 1."""
  frames = log_mel(waveform)
  count = (len(frames) - EXAMPLE_FRAMES) // EXAMPLE_FRAMES + 1
  if count < 1:
    raise ValueError(f'{len(frames)} log-mel frames are fewer than one example '
                     f'({EXAMPLE_FRAMES}).')
  return np.stack([frames[i * EXAMPLE_FRAMES:(i + 1) * EXAMPLE_FRAMES]
                   for i in range(count)]).astype(np.float32)


def clip_examples(waveform: np.ndarray) -> np.ndarray:
  """(160000,) 16-kHz samples of a 10-s clip -> (10, 96, 64) float32, one example per
  second."""
  seconds = len(waveform) // SAMPLE_RATE
  return np.concatenate([log_mel_examples(waveform[i * SAMPLE_RATE:(i + 1) * SAMPLE_RATE])
                         for i in range(seconds)])
