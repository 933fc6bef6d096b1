"""VGGish's log-mel front end against AudioSet's own NumPy code (`mel_features.py` and
`vggish_input.py`, as torchvggish ships them), and the release's one example per second."""

import numpy as np
import pytest

from avvp_jax.extract import frontend

vggish_input = pytest.importorskip('torchvggish.vggish_input')


def _waveforms():
  rng = np.random.default_rng(0)
  n = np.arange(16000 * 10)
  return {'noise': 0.3 * rng.uniform(-1, 1, n.size),
          'chirp': 0.5 * np.sin(2 * np.pi * (100 + 0.03 * n) * n / 16000),
          'silence': np.zeros(n.size)}


@pytest.mark.parametrize('kind', ['noise', 'chirp', 'silence'])
def test_log_mel_examples_match_audioset_reference(kind):
  wave = _waveforms()[kind]
  want = vggish_input.waveform_to_examples(wave, 16000, return_tensor=False)
  got = frontend.log_mel_examples(wave)
  assert got.shape == want.shape == (10, 96, 64)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_clip_examples_are_the_release_one_example_per_second():
  """AVVP-ECCV20's `wavfile_to_examples`: second i alone through the reference framing,
  not the whole clip framed every 0.96 s."""
  wave = _waveforms()['chirp']
  want = np.concatenate([
      vggish_input.waveform_to_examples(wave[i * 16000:(i + 1) * 16000], 16000,
                                        return_tensor=False) for i in range(10)])
  got = frontend.clip_examples(wave)
  assert got.shape == (10, 96, 64)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  # The two framings differ past the first example: the test can tell them apart.
  assert np.abs(got[1:] - frontend.log_mel_examples(wave)[1:]).max() > 0.1


def test_too_short_audio_is_refused():
  with pytest.raises(ValueError, match='fewer than one example'):
    frontend.log_mel_examples(np.zeros(9000))
