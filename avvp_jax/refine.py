"""Stage 2: modality-aware label refinement by swapping tracks between unrelated clips.

For each training clip i and partner j with a disjoint label set, the frozen base model sees
(V_i, A_j) ("changed audio") and (V_j, A_i) ("changed visual"). A labelled event that the
model stops seeing when a track is replaced was carried by that track only: the rule of
docs/spec.md section 4 then drops the label from the other modality's target. K partners per clip
are evaluated at once with `jax.vmap` and their probabilities averaged; K = 1 is the paper.
"""

import functools

import jax
import numpy as np
from tqdm import tqdm

from avvp_jax import metrics, placement, train
from avvp_jax.data import Split
from avvp_jax.data.classes import CLASSES
from avvp_jax.models import HAN

MAX_DRAW_ROUNDS = 50
# docs/spec.md section 4: the frozen model's training error counts predictions at 0.5, as the
# evaluation does; the rule's bar (`refine.threshold`) is a separate number.
ERROR_THRESHOLD = 0.5


def draw_partners(labels: np.ndarray, num_partners: int, rng: np.random.Generator) -> np.ndarray:
  """For each clip, `num_partners` clips whose label sets are disjoint from its own.

  Args:
    labels: bool (N, 25) weak labels.
  Returns:
    int (N, K) partner indices, drawn uniformly among the disjoint clips (with replacement).
  """
  labels = np.asarray(labels, bool)
  n = len(labels)
  partners = rng.integers(0, n, (n, num_partners))
  for _ in range(MAX_DRAW_ROUNDS):  # Rejection sampling: cheap while most draws succeed.
    bad = (labels[:, None, :] & labels[partners]).any(-1)
    if not bad.any():
      return partners
    partners[bad] = rng.integers(0, n, bad.sum())
  for i in np.flatnonzero(bad.any(1)):  # The rare clips whose disjoint partners are few.
    candidates = np.flatnonzero(~(labels & labels[i]).any(1))
    if not len(candidates):
      raise ValueError(f'Training clip {i} shares a label with every other clip: no partner '
                       'with a disjoint label set exists for the refinement.')
    partners[i, bad[i]] = rng.choice(candidates, bad[i].sum())
  return partners


def _swapped_one(model: HAN, params, data: dict, idx, partners) -> dict:
  """Mean over the K partners of a_prob / v_prob on the two swapped pairings, (B, 25) each.

  idx: (B,) clips i; partners: (B, K) clips j.
  """
  def apply(a, v2, v3):
    out = model.apply({'params': params}, data['audio'][a], data['video_2d'][v2],
                      data['video_3d'][v3], train=False)
    return out['a_prob'], out['v_prob']

  def one_partner(j):  # j: (B,)
    a_ca, v_ca = apply(j, idx, idx)  # (V_i, A_j): changed audio.
    a_cv, v_cv = apply(idx, j, j)  # (V_j, A_i): changed visual.
    return {'a_changed_audio': a_ca, 'v_changed_audio': v_ca,
            'a_changed_visual': a_cv, 'v_changed_visual': v_cv}

  return jax.tree.map(lambda x: x.mean(0), jax.vmap(one_partner, in_axes=1)(partners))


_swapped_probs = jax.jit(_swapped_one, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _swapped_probs_seeds(model: HAN, params, data: dict, idx, partners) -> dict:
  """`_swapped_one` of S models (params (S, ...)), each with its partners (S, B, K)."""
  return train.over_seeds(functools.partial(_swapped_one, model), (0, None, None, 0))(
      params, data, idx, partners)


def swapped_probs(model: HAN, params, split: Split, partners: np.ndarray,
                  pairs_per_batch: int, seeds: bool = False,
                  desc: str = 'refine') -> dict[str, np.ndarray]:
  """`_swapped_one` over the whole split in fixed-size batches; host arrays (N, 25).

  With `seeds`, `params` are S models stacked on a leading axis and `partners` (S, N, K)
  each model's partners; the outputs are (S, N, 25). A progress bar (`desc`) counts the
  batches.
  """
  num_seeds = len(partners) if seeds else 1
  mesh = placement.make_mesh(num_seeds)
  data = train.device_arrays(split, {}, mesh)
  n, k = partners.shape[-2:]
  batch = max(1, pairs_per_batch // k)
  params = jax.device_put(params, placement.params_sharding(mesh, seeds))
  outs = []
  starts = range(0, n, batch)
  # Shows progress even where the refinement runs for minutes (K = 16, several seeds).
  for start in tqdm(starts, desc=desc, leave=False, dynamic_ncols=True, disable=None):
    idx = np.arange(start, start + batch) % n  # Wrap the last batch: one compiled shape.
    if seeds:
      outs.append(_swapped_probs_seeds(model, params, data, idx, partners[:, idx]))
    else:
      outs.append(_swapped_probs(model, params, data, idx, partners[idx]))
  axis = 1 if seeds else 0
  return {key: np.concatenate([placement.host(o[key]) for o in outs], axis).take(
      np.arange(n), axis) for key in outs[0]}


def error_rate(prob: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
  """err[c]: the fraction of clips where `prob[:, c] >= threshold` disagrees with the label.

  prob, labels: (N, 25). Returns (25,).
  """
  return ((prob >= threshold) != (labels > 0)).mean(0)


def normalised_error(prob: np.ndarray, labels: np.ndarray,
                     threshold: float = ERROR_THRESHOLD) -> np.ndarray:
  """E[c] = err[c] / max(err), with err from `error_rate`.

  A class (or model) with no error gets E = 0, which never drops a label (the reference's
  division gives inf or nan there, which compares the same way).
  """
  err = error_rate(prob, labels, threshold)
  return err / err.max() if err.max() > 0 else np.zeros_like(err)


def refine_labels(orig: dict, swapped: dict, labels: np.ndarray, threshold: float = 0.5,
                  modalities: str = 'both') -> tuple[np.ndarray, np.ndarray]:
  """The refinement rule of docs/spec.md section 4.

  Args:
    orig: a_prob, v_prob (N, 25) on the original pairs.
    swapped: output of `swapped_probs`.
    labels: (N, 25) weak labels.
    threshold: the bar of the rule: a label drops where both swapped probabilities over E
      are below it (0.5 in the paper). E counts errors at ERROR_THRESHOLD, whatever the bar.
    modalities: which targets may lose labels: 'audio', 'visual' or 'both'.
  Returns:
    drop_a, drop_v: bool (N, 25), True where the label is removed from that modality's target.
  """
  if modalities not in ('audio', 'visual', 'both'):
    raise ValueError(f'refine.modalities must be audio, visual or both, not {modalities!r}.')
  labelled = labels > 0
  e_v = normalised_error(orig['v_prob'], labels)
  e_a = normalised_error(orig['a_prob'], labels)
  with np.errstate(divide='ignore', invalid='ignore'):
    below = lambda p, e: np.where(e > 0, p / e, np.inf) < threshold
    drop_v = labelled & below(swapped['v_changed_audio'], e_v) & below(
        swapped['a_changed_audio'], e_v)
    drop_a = labelled & below(swapped['a_changed_visual'], e_a) & below(
        swapped['v_changed_visual'], e_a)
  if modalities == 'audio':
    drop_v = np.zeros_like(drop_v)
  if modalities == 'visual':
    drop_a = np.zeros_like(drop_a)
  return drop_a, drop_v


def _percent(num: int, den: int):
  """100 num / den, or None where den is 0 (undefined: shown as n/a, left out of means)."""
  return 100 * num / den if den else None


def refinement_stats(labels: np.ndarray, drop_a: np.ndarray, drop_v: np.ndarray,
                     gt_a=None, gt_v=None) -> dict:
  """How many labels were dropped per modality and, where dense truth exists, how well.

  A dropped audio label is correct when the event is not audible anywhere in the clip;
  precision = correct drops / drops, recall = correct drops / labels absent from the modality.
  Precision is None when nothing was dropped, recall when no label is absent.
  """
  labelled = labels > 0
  stats = {'labels': int(labelled.sum())}
  for m, drop, gt in (('audio', drop_a, gt_a), ('visual', drop_v, gt_v)):
    stats[f'{m}/dropped'] = int(drop.sum())
    if gt is not None:
      absent = labelled & ~gt.any(-1)
      correct = int((drop & absent).sum())
      stats[f'{m}/absent'] = int(absent.sum())
      stats[f'{m}/precision'] = _percent(correct, int(drop.sum()))
      stats[f'{m}/recall'] = _percent(correct, int(absent.sum()))
  return stats


def base_error_stats(orig: dict, labels: np.ndarray) -> dict:
  """The frozen model's training error per modality, the signal of the rule's E_a and E_v.

  orig: a_prob, v_prob (N, 25) on the original pairs. Returns, per modality m, the mean
  error rate over classes (`m/train_error`, %) and in how many of the 25 classes it is above
  zero (`m/error_classes`); where it is zero, E is zero and no label of that class can drop.
  """
  stats = {}
  for m in ('audio', 'visual'):
    err = error_rate(orig[f'{m[0]}_prob'], labels, ERROR_THRESHOLD)
    stats[f'{m}/train_error'] = 100 * float(err.mean())
    stats[f'{m}/error_classes'] = int((err > 0).sum())
  return stats


def format_percent(value) -> str:
  return '  n/a' if value is None else f'{value:5.1f}'


def format_stats(stats: dict) -> str:
  lines = [f'Refinement: {stats["labels"]} weak labels on the train split']
  for m in ('audio', 'visual'):
    line = f'  {m:6s} dropped {stats[f"{m}/dropped"]:5d}'
    if f'{m}/precision' in stats:
      line += (f'  (truly absent {stats[f"{m}/absent"]:5d})  precision '
               f'{format_percent(stats[f"{m}/precision"])}  recall '
               f'{format_percent(stats[f"{m}/recall"])}')
    lines.append(line)
  if 'audio/error_classes' in stats:
    lines.append('  frozen model\'s training error: ' + ', '.join(
        f'{m} {stats[f"{m}/train_error"]:.1f} % (> 0 in {stats[f"{m}/error_classes"]}/'
        f'{len(CLASSES)} classes)' for m in ('audio', 'visual')))
  return '\n'.join(lines)


def format_seed_stats(per_seed: list[dict]) -> str:
  """The drops, their precision and recall as mean ± sd over the seeds' statistics."""
  lines = [f'Refinement, mean ± sd over {len(per_seed)} seeds:']
  cell = lambda key: metrics.format_mean_sd([p[key] for p in per_seed])
  for m in ('audio', 'visual'):
    lines.append(f'  {m:6s} dropped {cell(f"{m}/dropped")}' + ''.join(
        f'  {name} {cell(f"{m}/{name}")}' for name in ('precision', 'recall')
        if f'{m}/{name}' in per_seed[0]))
  return '\n'.join(lines)


def _mean_defined(values: list):
  """The mean of the values that are not None, or None if none is."""
  defined = [v for v in values if v is not None]
  return float(np.mean(defined)) if defined else None


def refine_targets(model: HAN, params, split: Split, refine_config, *, seeds: list[int],
                   eval_batch_size: int) -> tuple[dict[str, np.ndarray], dict]:
  """Stage 2 on a split for the frozen models of S seeds, `params` (S, ...): partners, swap,
  rule, statistics, seed by seed.

  Seed s draws its partners from `seeds[s]` and applies the rule to its own model's
  probabilities, or, with `refine_config.ensemble`, to the mean over all S models' (on its
  partners, and on the original pairs for E_a, E_v).
  Returns ({drop_a, drop_v: bool (S, N, 25), partners: int (S, N, K)}, statistics: the mean
  over the seeds of each number, and `per_seed`, those of each seed).
  """
  rc = refine_config
  partners = np.stack([draw_partners(split.labels, rc.num_partners,
                                     np.random.default_rng([seed, 2])) for seed in seeds])
  orig = train.predict(model, params, split, eval_batch_size, seeds=True)
  orig = {k: orig[k] for k in ('a_prob', 'v_prob')}
  if rc.ensemble:
    swapped = [{k: v.mean(0) for k, v in swapped_probs(
        model, params, split, np.broadcast_to(p, partners.shape), rc.batch_size,
        seeds=True).items()} for p in partners]
    mean = {k: v.mean(0) for k, v in orig.items()}
    orig = [mean] * len(seeds)
  else:
    out = swapped_probs(model, params, split, partners, rc.batch_size, seeds=True)
    swapped = [{k: v[s] for k, v in out.items()} for s in range(len(seeds))]
    orig = [{k: v[s] for k, v in orig.items()} for s in range(len(seeds))]
  drops, per_seed = [], []
  for s in range(len(seeds)):
    drop_a, drop_v = refine_labels(orig[s], swapped[s], split.labels, rc.threshold,
                                   rc.modalities)
    stats = refinement_stats(split.labels, drop_a, drop_v, split.gt_a, split.gt_v)
    stats.update(base_error_stats(orig[s], split.labels))
    drops.append((drop_a, drop_v))
    per_seed.append(stats)
  targets = {'drop_a': np.stack([d[0] for d in drops]), 'drop_v': np.stack([d[1] for d in drops]),
             'partners': partners}
  stats = {k: _mean_defined([p[k] for p in per_seed]) for k in per_seed[0]}
  return targets, {**stats, 'seeds': list(seeds), 'per_seed': per_seed}
