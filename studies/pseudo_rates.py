"""Which simulated pseudo-label rates give the published quality of VALOR's labels.

  python studies/pseudo_rates.py

The published quality (UWAV, Lai et al., CVPR 2025, Table 3: VALOR's CLIP / CLAP segment
pseudo labels scored on LLP's test split by the LLP protocol) is a segment-level F only:
audio 80.5, visual 61.7. Precision and recall are not given, so one rate per modality is
free. This script scores `pseudo_labels.simulate` by the same protocol (`metrics.evaluate`)
on the built-in test split, for each generator setting of studies/methods.md: first at the
config's rates, then with each modality's miss rate kept and its false-alarm rate scanned,
printing the false-alarm rate whose F is nearest the published one. The false alarm is the
free rate because it is the teachers' characteristic error on LLP: a labelled event fired
on in a modality where it is absent (off-screen speech seen as a person), which the
protocol punishes hard (a clip with no truth of that modality and one false segment scores
F = 0).
"""

import os
import sys

import numpy as np
from absl import app

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top
from avvp_jax import metrics
from avvp_jax.data import pseudo_labels, synthetic
from configs import valor

PUBLISHED_F = {'audio': 80.5, 'visual': 61.7}
SETTINGS = {'A': {}, 'B': {'noise': 2.0, 'asynchrony': 1.25}}
FALSE_ALARMS = np.round(np.arange(0.0, 0.301, 0.01), 2)


def score(split, rates) -> dict[str, tuple[float, float, float]]:
  """{modality: (protocol segment-level F, pooled precision, pooled recall)}."""
  pseudo = pseudo_labels.simulate(split, rates, seed=0)
  pred = {m: np.swapaxes(pseudo[m] >= 0.5, 1, 2) for m in pseudo}  # (N, 25, 10)
  results = metrics.evaluate(pred['audio'], pred['visual'], split.gt_a, split.gt_v)
  quality = pseudo_labels.quality(pseudo, split)
  return {m: (results[f'segment/{m}'], quality[f'{m}/precision'], quality[f'{m}/recall'])
          for m in pseudo_labels.MODALITIES}


def main(argv):
  del argv
  for name, overrides in SETTINGS.items():
    data = valor.get_config().data.synthetic
    data.update(overrides)
    split = synthetic.load(data)['test']
    rates = valor.get_config().data.pseudo_labels.simulated.to_dict()
    print(f'setting {name} {overrides or "(default generator)"}')
    for m, (f, p, r) in score(split, rates).items():
      print(f'  {m}: config rates (miss {rates[m + "_miss"]}, false alarm '
            f'{rates[m + "_false_alarm"]}) give F {f:.1f} (precision {p:.1f}, recall {r:.1f})')
    scanned = {fa: score(split, {**rates, 'audio_false_alarm': fa, 'visual_false_alarm': fa})
               for fa in FALSE_ALARMS}
    for m in pseudo_labels.MODALITIES:
      fa, (f, p, r) = min(((fa, s[m]) for fa, s in scanned.items()),
                          key=lambda item: abs(item[1][0] - PUBLISHED_F[m]))
      print(f'  {m}: published F {PUBLISHED_F[m]}; false alarm {fa:.2f} gives F {f:.1f} '
            f'(precision {p:.1f}, recall {r:.1f})')


if __name__ == '__main__':
  app.run(main)
