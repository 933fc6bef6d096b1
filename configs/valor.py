"""VALOR (Lai et al., NeurIPS 2023): HAN trained on segment-level pseudo labels per modality.

Usage:
  python launch/main.py --config=configs/valor.py            # one stage, built-in data
  python launch/main.py --config=configs/valor.py:refine     # + MA's refinement on top
  python launch/main.py --config=configs/valor.py:reference --config.data.source=llp \
      --config.data.dir=... --config.data.pseudo_labels.audio=.../CLAP/segment_pseudo_labels \
      --config.data.pseudo_labels.visual=.../CLIP/segment_pseudo_labels

Every default below is that of the official code (Franklin905/VALOR, `main_avvp.py` and
`scripts/train_valor.sh`) unless it says otherwise:
- loss: BCE(global_prob, y) + BCE-with-logits of the audio and of the visual frame logits
  against the segment pseudo labels (`losses.pseudo_label_loss`); no contrastive term;
- model: HAN with d 512, 8 heads, FFN 1024, dropout 0.1, one layer, post-norm, and its
  encoder order (`model.sequential`: the visual stream attends to the audio stream after
  the layer has updated it);
- AdamW, lr 1e-4, betas (0.5, 0.999), weight decay 1e-3, gradients clipped to norm 1.0,
  batch 64; lr warmed up over 10 epochs then annealed along a cosine to 1e-6, 60 epochs;
- model selection: the epoch with the best validation segment-level Type@AV (strictly
  greater, so the first of ties); evaluation filters both modalities' segments by
  global_prob >= 0.5 (its `eval`), not by a_prob / v_prob.

Schedules: `builtin` (default): 24 epochs, 4 of warm-up (the official 60 and 10 scaled by
0.4, so that the built-in run takes minutes on 2 cores; not tuned); `reference`: 60 and 10.

Built-in data: the pseudo labels are simulated from its dense truth
(`data.pseudo_labels.simulated`): restricted to the clip's weak labels, a truly active
segment is missed with probability `<m>_miss`, an inactive segment of a labelled class is a
false alarm with probability `<m>_false_alarm`. The defaults (miss / false alarm: audio
0.25 / 0.07, visual 0.15 / 0.14) give, scored by the LLP protocol on the built-in test
split, the segment-level F that UWAV (Lai et al., CVPR 2025, Table 3) reports for VALOR's
CLAP and CLIP labels on LLP's test split: audio 80.5, visual 61.7. The miss rates are this
project's choice; the false-alarm rates are solved for by studies/pseudo_rates.py. The run
prints the labels' precision and recall against the truth.

`refine`: MA's stage 2 on the stage-1 VALOR model (its best-val epoch), then a fresh VALOR
model whose pseudo labels are zeroed for every (clip, class, modality) that the rule drops.
"""

import ml_collections

from configs import ma

SCHEDULES = {
    # name: (epochs, warm-up epochs)
    'builtin': (24, 4),
    'reference': (60, 10),
}


def parse_arg(arg: str) -> tuple[bool, str]:
  """'', 'refine', 'reference', 'refine,reference' -> (refine, schedule)."""
  refine, schedule = False, None
  for token in filter(None, arg.split(',')):
    if token == 'refine' and not refine:
      refine = True
    elif token in SCHEDULES and schedule is None:
      schedule = token
    else:
      raise ValueError(f'Bad config argument {arg!r} at {token!r}: give refine and at most '
                       f'one schedule ({", ".join(SCHEDULES)}).')
  return refine, schedule or 'builtin'


def get_config(arg: str = ''):
  refine, schedule = parse_arg(arg)
  epochs, warmup = SCHEDULES[schedule]
  config = ma.get_config('r' if refine else 'baseline')
  config.name = 'valor' + (':refine' if refine else '') + (
      '' if schedule == 'builtin' else f',{schedule}')

  config.data.pseudo_labels = ml_collections.ConfigDict()
  # VALOR's release layout: one (10, 25) <11-character video id>.npy per clip.
  config.data.pseudo_labels.audio = ''
  config.data.pseudo_labels.visual = ''
  config.data.pseudo_labels.simulated = ml_collections.ConfigDict({
      'audio_miss': 0.25, 'audio_false_alarm': 0.07,
      'visual_miss': 0.15, 'visual_false_alarm': 0.14})

  config.model.num_heads = 8
  config.model.ffn_dim = 1024
  config.model.sequential = True

  config.loss.kind = 'pseudo_labels'
  config.loss.contrastive = False

  tc = config.train
  tc.epochs = epochs
  tc.batch_size = 64
  tc.optimizer = 'adamw'
  tc.lr = 1e-4
  tc.b1 = 0.5
  tc.weight_decay = 1e-3
  tc.grad_norm = 1.0
  tc.schedule = 'warmup_cosine'
  tc.warmup_epochs = warmup
  tc.lr_min = 1e-6
  del tc['lr_decay_every'], tc['lr_decay']
  tc.base_selection = 'best_val'

  config.eval.clip_filter = 'global'
  config.eval.model = 'best_val'
  return config
