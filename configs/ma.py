"""MA (CVPR 2021) on LLP-shaped data: the full method (+C+R), its ablations and schedules.

Usage:
  python launch/main.py --config=configs/ma.py             # MA: MIL + contrastive + refinement
  python launch/main.py --config=configs/ma.py:baseline    # HAN: MIL only, one stage
  python launch/main.py --config=configs/ma.py:c           # + contrastive, one stage
  python launch/main.py --config=configs/ma.py:r           # + refinement, no contrastive
  python launch/main.py --config=configs/ma.py:cr,paper    # MA with the paper's schedule
The argument is a variant, a schedule, or both separated by a comma. Other ablations are
plain overrides, e.g. `--config.refine.modalities=audio`, `--config.loss.tau=0.1`,
`--config.refine.num_partners=16`.

Schedules (epochs per training stage, lr x 0.1 every `lr_decay_every` epochs):
  builtin    8 epochs, step 3 (default): for the built-in synthetic data (2,000 training
             clips), whose clips are easier to fit than LLP's: trained longer, stage 1 stops
             erring on its training clips in almost every class, and the rule, whose E is
             err / max(err), can no longer drop their labels (studies/regime.md).
  reference  12 epochs, step 10: the defaults of the reference scripts, on LLP (10,000 clips).
  paper      40 epochs, step 10: the paper's setting, on LLP (10,000 clips).
Use `reference` or `paper` with `--config.data.source=llp`.
"""

import ml_collections

VARIANTS = {
    # name: (contrastive, refine)
    'baseline': (False, False),
    'c': (True, False),
    'r': (False, True),
    'cr': (True, True),
}
SCHEDULES = {
    # name: (epochs per training stage, lr_decay_every)
    'builtin': (8, 3),
    'reference': (12, 10),
    'paper': (40, 10),
}


def parse_arg(arg: str) -> tuple[str, str]:
  """'cr', 'paper', 'cr,paper' ... -> (variant, schedule); 'cr' and 'builtin' by default."""
  variant, schedule = None, None
  for token in filter(None, arg.split(',')):
    if token in VARIANTS and variant is None:
      variant = token
    elif token in SCHEDULES and schedule is None:
      schedule = token
    else:
      raise ValueError(f'Bad config argument {arg!r} at {token!r}: give at most one variant '
                       f'({", ".join(VARIANTS)}) and one schedule ({", ".join(SCHEDULES)}).')
  return variant or 'cr', schedule or 'builtin'


def get_config(arg: str = 'cr') -> ml_collections.ConfigDict:
  variant, schedule = parse_arg(arg)
  contrastive, refine = VARIANTS[variant]
  epochs, lr_decay_every = SCHEDULES[schedule]

  config = ml_collections.ConfigDict()
  config.name = f'ma:{variant}' + ('' if schedule == 'builtin' else f',{schedule}')
  config.seed = 0
  # Models trained side by side in one vmapped program, with seeds seed, seed + 1, ...; every
  # number is then reported as mean ± sd over them, and per seed.
  config.num_seeds = 1
  # Draw the run's pictures into <workdir>/plots at its end (`plots.plot_run`).
  config.plots = True

  config.data = ml_collections.ConfigDict()
  config.data.source = 'synthetic'  # 'synthetic' (built in) or 'llp' (the public release).
  # LLP release: `dir` holds the CSV files; the three feature folders default to
  # <dir>/vggish, <dir>/res152, <dir>/r2plus1d_18 and can be given separately.
  config.data.dir = ''
  config.data.audio_dir = ''
  config.data.video_dir = ''
  config.data.st_dir = ''
  config.data.tfds_dir = ''  # Where the array_record build goes; default <dir>/tfds.
  config.data.synthetic = ml_collections.ConfigDict()
  config.data.synthetic.seed = 0
  config.data.synthetic.num_train = 2000
  config.data.synthetic.num_val = 128
  config.data.synthetic.num_test = 1000
  # Feature noise relative to the event signal; higher is harder.
  config.data.synthetic.noise = 1.0
  # Scales how often an event is audible-only or visible-only (1.0 = LLP's rates).
  config.data.synthetic.asynchrony = 1.0

  config.model = ml_collections.ConfigDict()
  config.model.d_model = 512
  config.model.num_heads = 1
  config.model.ffn_dim = 512
  config.model.dropout = 0.1
  config.model.num_classes = 25
  config.model.audio_dim = 128
  config.model.video_2d_dim = 2048
  config.model.video_3d_dim = 512
  config.model.dtype = 'float32'  # 'bfloat16': bf16 compute, float32 parameters.
  config.model.visual_dropout = 0.0  # On the visual stream before the heads (JoMoLD: 0.5).
  config.model.sequential = False  # VALOR's encoder order (configs/valor.py).

  config.loss = ml_collections.ConfigDict()
  config.loss.kind = 'mil'  # 'pseudo_labels': VALOR's (configs/valor.py).
  config.loss.clip = 1e-7
  config.loss.visual_label_smoothing = 0.1  # y_v = 0.9 y + 0.05.
  config.loss.contrastive = contrastive
  config.loss.contrastive_weight = 1.0
  config.loss.tau = 0.2
  config.loss.contrastive_label_smoothing = 0.1

  config.train = ml_collections.ConfigDict()
  config.train.epochs = epochs
  config.train.batch_size = 16
  config.train.optimizer = 'adam'  # Or 'adamw' (with b1, weight_decay; VALOR).
  config.train.grad_norm = 0.0  # Clip gradients to this global norm; 0: no clipping.
  config.train.schedule = 'step'  # Or 'warmup_cosine' (VALOR).
  config.train.lr = 3e-4
  config.train.lr_decay_every = lr_decay_every  # epochs
  config.train.lr_decay = 0.1
  # At most this many train steps per jitted call (a lax.scan): one dispatch and one loss
  # fetch per call. Sets the speed only: a workdir may be resumed with another value.
  config.train.steps_per_call = 25
  # Which stage-1 model feeds the refinement: 'last' (reference) or 'best_val'
  # (highest validation Type@AV, guards against an over-fitted base; docs/spec.md 4b).
  config.train.base_selection = 'last'
  config.train.eval_batch_size = 256

  # The evaluation protocol (docs/spec.md section 5) and model selection, per method.
  config.eval = ml_collections.ConfigDict()
  # Segments of a modality count where its clip-level probability passes 0.5: 'modality'
  # (a_prob, v_prob; MA, JoMoLD) or 'global' (global_prob for both; VALOR).
  config.eval.clip_filter = 'modality'
  # Which epoch of a training stage its test report scores: 'last' (MA) or 'best_val'.
  config.eval.model = 'last'
  # What the best-val checkpoint is chosen by, and which of equal values wins ('first':
  # strictly greater, 'last': greater or equal).
  config.eval.val_metric = 'segment/type'
  config.eval.val_ties = 'first'

  config.refine = ml_collections.ConfigDict()
  config.refine.enabled = refine
  config.refine.modalities = 'both'  # 'audio', 'visual' or 'both' (Table 3).
  config.refine.num_partners = 1  # K; 1 is the paper.
  # The rule's bar: drop where both swapped probabilities / E fall below it (0.5 in the
  # paper). E itself always counts the frozen model's errors at 0.5 (docs/spec.md section 4).
  config.refine.threshold = 0.5
  # With several seeds: apply the rule to the mean probabilities of all seeds' stage-1 models
  # (on each seed's partners) instead of each seed's own model.
  config.refine.ensemble = False
  # Reference detail: dropping an audio label also zeroes the clip-level target y[c].
  config.refine.audio_drop_clears_global = True
  # Pairs per jitted call of the track swap; sets the speed and the memory only (at 1,024 its
  # temporaries took 1.1 GB, more than the features of 2,000 clips).
  config.refine.batch_size = 256

  return config
