"""MA (CVPR 2021) on LLP-shaped data: the full method (+C+R) and its Table-2 ablations.

Usage:
  python launch/main.py --config=configs/ma.py             # MA: MIL + contrastive + refinement
  python launch/main.py --config=configs/ma.py:baseline    # HAN: MIL only, one stage
  python launch/main.py --config=configs/ma.py:c           # + contrastive, one stage
  python launch/main.py --config=configs/ma.py:r           # + refinement, no contrastive
Other ablations are plain overrides, e.g. `--config.refine.modalities=audio`,
`--config.loss.tau=0.1`, `--config.refine.num_partners=16`.
"""

import ml_collections

VARIANTS = {
    # name: (contrastive, refine)
    'baseline': (False, False),
    'c': (True, False),
    'r': (False, True),
    'cr': (True, True),
}


def get_config(arg: str = 'cr') -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f'Unknown variant {arg!r}; choose one of {sorted(VARIANTS)}.')
  contrastive, refine = VARIANTS[arg]

  config = ml_collections.ConfigDict()
  config.name = f'ma:{arg}'
  config.seed = 0

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
  # Sized so that all three stages (2 x 40 epochs) finish in under 5 minutes on 2 CPU cores.
  config.data.synthetic.num_train = 384
  config.data.synthetic.num_val = 128
  config.data.synthetic.num_test = 256
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

  config.loss = ml_collections.ConfigDict()
  config.loss.clip = 1e-7
  config.loss.visual_label_smoothing = 0.1  # y_v = 0.9 y + 0.05.
  config.loss.contrastive = contrastive
  config.loss.contrastive_weight = 1.0
  config.loss.tau = 0.2
  config.loss.contrastive_label_smoothing = 0.1

  config.train = ml_collections.ConfigDict()
  config.train.epochs = 40
  config.train.batch_size = 16
  config.train.lr = 3e-4
  config.train.lr_decay_every = 10  # epochs
  config.train.lr_decay = 0.1
  # At most this many train steps per jitted call (a lax.scan): one dispatch and one loss
  # fetch per call. Sets the speed only: a workdir may be resumed with another value.
  config.train.steps_per_call = 25
  # Which stage-1 model feeds the refinement: 'last' (reference) or 'best_val'
  # (highest validation Type@AV, guards against an over-fitted base; METHOD.md 4b).
  config.train.base_selection = 'last'
  config.train.eval_batch_size = 256

  config.refine = ml_collections.ConfigDict()
  config.refine.enabled = refine
  config.refine.modalities = 'both'  # 'audio', 'visual' or 'both' (Table 3).
  config.refine.num_partners = 1  # K; 1 is the paper.
  config.refine.threshold = 0.5
  # Reference detail: dropping an audio label also zeroes the clip-level target y[c].
  config.refine.audio_drop_clears_global = True
  config.refine.batch_size = 1024

  return config
