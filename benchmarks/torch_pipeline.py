"""MA's three stages in PyTorch, driven as the published reference drives them: the yardstick
of the library's whole pipeline (base training -> label refinement -> retraining -> test).

  python benchmarks/torch_pipeline.py --config=configs/ma.py --json=FILE \
      [--config.data.synthetic.num_train=64 ...] [--device=cuda] [--loader_workers=4]

Writes {phase: seconds} for 'base epochs', 'validation', 'refinement', 'final epochs',
'test evaluation' and 'wall', and the final model's test Type@AV (segment level) under
'final_test_type', a sanity figure. Not part of the library: the model, its losses and the 2D
features at 80 frames are benchmarks/torch_han.py's; the method is docs/spec.md sections 3-5.

What is mirrored, from Yu-Wu/Modaily-Aware-Audio-Visual-Video-Parsing (MA's scripts, which
follow YapengTian/AVVP-ECCV20/main_avvp.py for training and evaluation):
- Training (step1_train_base_model/main_avvp.py, step3_retrain/main_avvp.py): a DataLoader
  over per-clip items, batch 16, shuffled; Adam at lr 3e-4, StepLR (x `lr_decay` every
  `lr_decay_every` epochs, stepped after each epoch); MIL + contrastive loss per batch.
- After every epoch, the val split evaluated clip by clip (`eval`): a DataLoader at batch 1,
  not shuffled, so that the batch index is the clip's row; per clip one forward pass under
  no_grad, the outputs to numpy, thresholds, the clip's F scores appended to lists, and their
  means at the end. Stage 3 then evaluates the test split the same way; here stage 1 does
  too (the brief of this yardstick; the reference's step 1 saves its model and tests it in a
  separate `--mode test` run, the same loop).
- Stage 2 (step2_find_exchange/main_avvp.py `get_modality_aware_label`, and its
  dataloader.py): a DataLoader over the training clips at the training batch (16), shuffled;
  each item draws its partner j when it is loaded, by rejection sampling (uniform draws over
  the split until one has a label set disjoint from clip i's), and carries j's three
  features; per batch three forward passes in eval mode: (V_i, A_i), (V_j, A_i) ("changed
  visual") and (V_i, A_j) ("changed audio"); the probabilities gathered over the loop, the
  error rates of the original pairs and the rule applied once at the end (`estimate_label`).
  The rule is `avvp_jax.refine.refine_labels` (docs/spec.md section 4), and the stage-3 targets
  `avvp_jax.train.targets_from_labels`, with the reference's "an audio drop also clears y".

Where this differs from the reference. Every departure but one makes the yardstick faster;
the one, a test evaluation after stage 1, is what the library's main command does too:
- The features are in memory (the Split's arrays), not one `np.load` per clip and feature
  file; the reference also reads the truth of each evaluated clip out of the annotation CSVs
  with a pandas filter, here it is the Split's dense truth, indexed by the clip's row.
- Per-clip metrics: `avvp_jax.metrics.segment_predictions` and `metrics.evaluate` on one clip
  (arrays with N = 1; the same ten numbers as the reference's eval_metrics.py, vectorised over
  classes) instead of its Python loops over classes and events.
- Stage 2 runs under `torch.no_grad` (the reference's forward passes there record autograd
  graphs that are never used); `torch_han.HAN` returns no contrastive similarities, so the
  reference's unused similarity products and `fc_a(audio2)` are not computed; stage 3 takes
  its refined targets as arrays (the reference's items test `idx in list` per class) and loads
  no unused `audio2` track.
- Error rates count predictions at >= 0.5 (docs/spec.md, the library); the reference's at > 0.5.
- DataLoader workers: `loader_workers` for training and stage 2 (the reference: 12), at most 1
  for evaluation (the reference: 1); 0 by default, as the suite's CPU profile, where workers
  would compete with the compute threads.
- The three stages run in one process; the reference's are three scripts, the stage-1 model
  and the dropped labels passing through files.
"""

import os
import sys

if __name__ == '__main__':
  # Keep JAX (targets_from_labels runs jnp) off the accelerator, which PyTorch is timed on.
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# As benchmarks/run.py does, before torch loads OpenMP: spinning barriers on a shared CPU
# slow PyTorch down several times.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

# pylint: disable=g-import-not-at-top,wrong-import-position
import collections
import contextlib
import json
import time

import ml_collections
import numpy as np
import torch
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from avvp_jax import data, metrics, refine, train
from avvp_jax.data.split import FEATURES, Split
from benchmarks import torch_han

PHASES = ('base epochs', 'validation', 'refinement', 'final epochs', 'test evaluation')
# Stage 2's four swapped outputs, named as avvp_jax.refine.swapped_probs names them.
SWAPPED = ('a_changed_audio', 'v_changed_audio', 'a_changed_visual', 'v_changed_visual')
MAX_PARTNER_DRAWS = 100_000  # The reference draws forever; a clip with no partner stops here.


def make_model(model_config: ml_collections.ConfigDict) -> torch_han.HAN:
  c = model_config
  return torch_han.HAN(d_model=c.d_model, num_heads=c.num_heads, ffn_dim=c.ffn_dim,
                       dropout=c.dropout, num_classes=c.num_classes, audio_dim=c.audio_dim,
                       video_2d_dim=c.video_2d_dim, video_3d_dim=c.video_3d_dim)


def _loader(dataset, batch_size: int, shuffle: bool, workers: int,
            device: torch.device) -> torch.utils.data.DataLoader:
  return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                     num_workers=workers, pin_memory=device.type == 'cuda')


def _to(batch: dict, device: torch.device) -> dict:
  return {k: x.to(device, non_blocking=True) for k, x in batch.items()}


class PairDataset(torch.utils.data.Dataset):
  """Stage 2's items: clip i and a partner j whose label set is disjoint from i's, drawn when
  the item is loaded, as the reference's step-2 dataset does.

  An item: audio, video_2d (80, 2048), video_3d of clip i, the same three of j with the
  suffix 2 (audio2 ...), and idx = i, idx2 = j. The draws use torch's generator, which the
  DataLoader seeds per worker (a NumPy generator would repeat its draws in every worker).
  """

  def __init__(self, split: Split):
    self.clips = torch_han.ClipDataset(split.audio, split.video_2d, split.video_3d, {})
    self.labels = split.labels > 0

  def __len__(self) -> int:
    return len(self.labels)

  def partner(self, i: int) -> int:
    for _ in range(MAX_PARTNER_DRAWS):
      j = int(torch.randint(len(self), ()))
      if not (self.labels[i] & self.labels[j]).any():
        return j
    raise ValueError(f'Training clip {i}: no clip with a disjoint label set in '
                     f'{MAX_PARTNER_DRAWS} draws.')

  def __getitem__(self, i: int) -> dict:
    j = self.partner(i)
    own, other = self.clips[i], self.clips[j]
    return {**own, **{f'{k}2': other[k] for k in FEATURES}, 'idx': i, 'idx2': j}


def _train_epoch(model: torch_han.HAN, loader, optimizer, device: torch.device,
                 tau: float) -> None:
  """One pass over the loader: per batch forward (train mode), MIL + contrastive, backward,
  one Adam update. No loss is fetched: a fetch per batch would wait for the device."""
  model.train()
  for batch in loader:
    batch = _to(batch, device)
    optimizer.zero_grad()
    out = model(batch['audio'], batch['video_2d'], batch['video_3d'])
    torch_han.total_loss(out, batch, tau).backward()
    optimizer.step()


def _evaluate(model: torch_han.HAN, loader, split: Split, device: torch.device) -> dict:
  """The ten numbers of docs/spec.md section 5, clip by clip as the reference's `eval`.

  loader: batch 1, not shuffled, over `split`: the batch index is the clip's row of
  split.gt_a / split.gt_v (25, 10). Each clip's scores (x100) are appended per key and
  averaged over the clips at the end; Type@AV, a mean of three per-clip scores, averages to
  the mean of the three averages, the reference's.
  """
  model.eval()
  per_clip = collections.defaultdict(list)
  with torch.no_grad():
    for i, clip in enumerate(loader):
      out = model(*(clip[k].to(device, non_blocking=True) for k in FEATURES))
      frame_prob, a_prob, v_prob = (out[k].cpu().numpy()
                                    for k in ('frame_prob', 'a_prob', 'v_prob'))
      pred_a, pred_v = metrics.segment_predictions(frame_prob, a_prob, v_prob)  # (1, 25, 10)
      scores = metrics.evaluate(pred_a, pred_v, split.gt_a[i:i + 1], split.gt_v[i:i + 1])
      for key, value in scores.items():
        per_clip[key].append(value)
  return {key: float(np.mean(values)) for key, values in per_clip.items()}


def refine_clips(model: torch_han.HAN, split: Split, refine_config, batch_size: int,
                 device: torch.device, loader_workers: int = 0) -> dict[str, np.ndarray]:
  """Stage 2 on the training split with the frozen stage-1 model.

  Returns, in the split's clip order: a_prob, v_prob (N, 25) on the original pairs; the
  four SWAPPED (N, 25), e.g. a_changed_audio = a_prob of (V_i, A_j); partners (N,) the j of
  each clip; drop_a, drop_v bool (N, 25) from `refine.refine_labels` at
  `refine_config.threshold` and `.modalities`.
  """
  loader = _loader(PairDataset(split), batch_size, True, loader_workers, device)
  model.eval()
  rows = collections.defaultdict(list)
  with torch.no_grad():
    for batch in loader:
      b = _to(batch, device)
      orig = model(b['audio'], b['video_2d'], b['video_3d'])  # (V_i, A_i)
      changed_visual = model(b['audio'], b['video_2d2'], b['video_3d2'])  # (V_j, A_i)
      changed_audio = model(b['audio2'], b['video_2d'], b['video_3d'])  # (V_i, A_j)
      for m in 'av':
        rows[f'{m}_prob'].append(orig[f'{m}_prob'].cpu().numpy())
        rows[f'{m}_changed_visual'].append(changed_visual[f'{m}_prob'].cpu().numpy())
        rows[f'{m}_changed_audio'].append(changed_audio[f'{m}_prob'].cpu().numpy())
      rows['idx'].append(batch['idx'].numpy())
      rows['partners'].append(batch['idx2'].numpy())
  # Shuffled batches: back to the split's clip order.
  order = np.argsort(np.concatenate(rows.pop('idx')))
  out = {k: np.concatenate(v)[order] for k, v in rows.items()}
  out['drop_a'], out['drop_v'] = refine.refine_labels(
      {k: out[k] for k in ('a_prob', 'v_prob')}, {k: out[k] for k in SWAPPED}, split.labels,
      refine_config.threshold, refine_config.modalities)
  return out


def run_pipeline(splits: dict[str, Split], config: ml_collections.ConfigDict, device='cpu',
                 seed: int = 0, loader_workers: int = 0,
                 record: dict | None = None) -> dict[str, float]:
  """The three stages and the test evaluations; seconds per phase.

  Args:
    splits: 'train', 'val', 'test'; val and test with dense truth.
    config: configs/ma.py's: model sizes, train (epochs, lr, lr_decay_every, lr_decay,
      batch_size), loss.tau, refine (threshold, modalities, audio_drop_clears_global).
    device: where PyTorch runs.
    loader_workers: DataLoader workers of training and stage 2 (evaluation: at most 1).
    record: where given, filled with stage 2's outputs ('refinement', `refine_stage`'s) and
      the stage-3 targets ('targets': y_global, y_a, y_v (N, 25)), for the tests.
  Returns:
    {phase: seconds} for PHASES and 'wall' (the whole call), and 'final_test_type': the
    stage-3 model's segment-level Type@AV on the test split.
  """
  train_split, val, test = splits['train'], splits['val'], splits['test']
  # The weak targets, arrays the DataLoader indexes (the reference's items compute theirs),
  # made before the clock: the first call of targets_from_labels starts JAX, no cost of
  # PyTorch's.
  weak = train.targets_from_labels(train_split.labels, config.loss)
  start = time.perf_counter()
  device = torch.device(device)
  torch.manual_seed(seed)
  seconds = collections.defaultdict(float)

  @contextlib.contextmanager
  def phase(name: str):
    begin = time.perf_counter()
    try:
      yield
    finally:
      if device.type == 'cuda':  # Kernels run asynchronously: charge them to their phase.
        torch.cuda.synchronize(device)
      seconds[name] += time.perf_counter() - begin

  # Evaluation loaders as the reference's: batch 1, in order, at most one worker.
  eval_loaders = {name: _loader(torch_han.ClipDataset(s.audio, s.video_2d, s.video_3d, {}),
                                1, False, min(loader_workers, 1), device)
                  for name, s in (('val', val), ('test', test))}
  tc = config.train

  def train_stage(targets: dict[str, np.ndarray], epochs_phase: str):
    """A fresh model trained `tc.epochs` epochs, the val split evaluated after each, the
    test split after the last. Returns (model, test scores)."""
    model = make_model(config.model).to(device)
    loader = _loader(torch_han.ClipDataset(train_split.audio, train_split.video_2d,
                                           train_split.video_3d, targets),
                     tc.batch_size, True, loader_workers, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=tc.lr_decay_every,
                                                gamma=tc.lr_decay)
    for _ in range(tc.epochs):
      with phase(epochs_phase):
        _train_epoch(model, loader, optimizer, device, config.loss.tau)
        scheduler.step()
      with phase('validation'):
        _evaluate(model, eval_loaders['val'], val, device)
    with phase('test evaluation'):
      scores = _evaluate(model, eval_loaders['test'], test, device)
    return model, scores

  base, _ = train_stage(weak, 'base epochs')
  with phase('refinement'):
    refined = refine_clips(base, train_split, config.refine, tc.batch_size, device,
                           loader_workers)
    targets = train.targets_from_labels(
        train_split.labels, config.loss, refined['drop_a'], refined['drop_v'],
        audio_drop_clears_global=config.refine.audio_drop_clears_global)
  del base
  _, scores = train_stage(targets, 'final epochs')
  if record is not None:
    record.update(refinement=refined, targets=targets)
  result = {name: seconds[name] for name in PHASES}
  result['wall'] = time.perf_counter() - start
  result['final_test_type'] = scores['segment/type']
  return result


def main(argv):
  del argv
  f = flags.FLAGS
  result = run_pipeline(data.load_splits(f.config.data), f.config, f.device, f.seed,
                        f.loader_workers)
  with open(f.json, 'w') as out:
    json.dump(result, out, indent=1)


if __name__ == '__main__':
  # Defined here, not on import: the tests import this module beside others' flags.
  config_flags.DEFINE_config_file('config', None, 'A config file.', lock_config=False)
  flags.DEFINE_string('json', None, 'Where {phase: seconds} goes.')
  flags.DEFINE_string('device', 'cpu', 'The torch device.')
  flags.DEFINE_integer('seed', 0, 'torch.manual_seed of the run.')
  flags.DEFINE_integer('loader_workers', 0, 'DataLoader workers (training, stage 2).')
  flags.mark_flags_as_required(['config', 'json'])
  app.run(main)
