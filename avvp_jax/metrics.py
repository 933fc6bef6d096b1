"""The AVVP evaluation protocol (docs/spec.md, section 5), vectorised over clips and classes.

Predictions and truth are boolean arrays of shape (N, C, T): clips, classes, segments.
Audio-visual arrays are always derived inside `evaluate` as the AND of audio and visual.
"""

import math

import numpy as np

from avvp_jax.data.classes import CLASSES

MODALITIES = ('audio', 'visual', 'av')
LEVELS = (('segment', 'Segment-level'), ('event', 'Event-level'))
COLUMNS = (
    ('audio', 'Audio'),
    ('visual', 'Visual'),
    ('av', 'Audio-Visual'),
    ('type', 'Type@AV'),
    ('event', 'Event@AV'),
)


def segment_predictions(frame_prob, a_prob, v_prob, threshold=0.5):
  """Thresholds the model outputs into segment-level predictions.

  Args:
    frame_prob: (N, T, 2, C) per-segment probabilities; modality 0 audio, 1 visual.
    a_prob: (N, C) clip-level audio probabilities.
    v_prob: (N, C) clip-level visual probabilities.
    threshold: a segment is on when both its frame and clip probabilities are >= this.

  Returns:
    (pred_a, pred_v), each bool (N, C, T).
  """
  frame_on = np.moveaxis(np.asarray(frame_prob) >= threshold, 1, -1)  # (N, 2, C, T)
  pred_a = frame_on[:, 0] & (np.asarray(a_prob) >= threshold)[..., None]
  pred_v = frame_on[:, 1] & (np.asarray(v_prob) >= threshold)[..., None]
  return pred_a, pred_v


def _segment_counts(pred, gt):
  """Segment TP, FP, FN per clip and class: (N, C, T) bool -> three (N, C) ints."""
  tp = np.sum(pred & gt, axis=-1)
  fp = np.sum(pred & ~gt, axis=-1)
  fn = np.sum(~pred & gt, axis=-1)
  return tp, fp, fn


def _run_membership(x):
  """One-hot membership of each segment in the r-th event (maximal run) of its row.

  Args:
    x: (N, C, T) bool.

  Returns:
    (N, C, R, T) bool with R = ceil(T / 2), the most runs a row of T segments can hold;
    rows with fewer runs have all-False slots at the end.
  """
  starts = x.copy()
  starts[..., 1:] &= ~x[..., :-1]
  run_id = np.where(x, np.cumsum(starts, axis=-1), 0)  # 1..R inside runs, 0 outside.
  num_slots = (x.shape[-1] + 1) // 2
  return run_id[..., None, :] == np.arange(1, num_slots + 1)[:, None]


def _event_counts(pred, gt):
  """Event TP, FP, FN per clip and class: (N, C, T) bool -> three (N, C) ints.

  A predicted event is a TP if some truth event of its row has IoU >= 0.5 with it, else an
  FP; a truth event matched by no predicted event is an FN. Matching is not one-to-one.
  """
  # Sums of 0/1 products are exact in float32, which takes numpy's fast matmul path.
  member_p = _run_membership(pred).astype(np.float32)  # (N, C, R, T)
  member_g = _run_membership(gt).astype(np.float32)
  inter = member_p @ np.swapaxes(member_g, -1, -2)  # (N, C, R_pred, R_gt)
  size_p = np.einsum('ncrt->ncr', member_p)  # 0 for empty slots.
  size_g = np.einsum('ncrt->ncr', member_g)
  union = size_p[..., :, None] + size_g[..., None, :] - inter
  # IoU >= 0.5 <=> 2 * inter >= union, exactly; inter > 0 excludes empty slots.
  match = (inter > 0) & (2 * inter >= union)  # (N, C, R_pred, R_gt)
  tp = np.sum(np.any(match, axis=-1), axis=-1)
  fp = np.sum(size_p > 0, axis=-1) - tp
  fn = np.sum((size_g > 0) & ~np.any(match, axis=-2), axis=-1)
  return tp, fp, fn


def _clip_scores(tp, fp, fn):
  """Per-clip score: mean F over the classes with any positive, 1.0 if none.

  Args:
    tp, fp, fn: (N, C) counts.

  Returns:
    (N,) float64.
  """
  denom = 2 * tp + fp + fn
  present = denom > 0  # Same as TP + FP > 0 or TP + FN > 0, as counts are >= 0.
  f = np.where(present, 2 * tp / np.maximum(denom, 1), 0.0)
  num_present = np.sum(present, axis=-1)
  return np.where(num_present > 0, np.sum(f, axis=-1) / np.maximum(num_present, 1), 1.0)


def _level_scores(counts):
  """The five numbers of one level from {modality: (tp, fp, fn)}; keys as in COLUMNS."""
  scores = {m: 100 * float(np.mean(_clip_scores(*counts[m]))) for m in MODALITIES}
  scores['type'] = float(np.mean([scores[m] for m in MODALITIES]))
  # Event@AV pools audio and visual counts per class before the F rule.
  pooled = [a + v for a, v in zip(counts['audio'], counts['visual'])]
  scores['event'] = 100 * float(np.mean(_clip_scores(*pooled)))
  return scores


def evaluate(pred_a, pred_v, gt_a, gt_v):
  """The ten numbers of the protocol, x100.

  Args:
    pred_a, pred_v, gt_a, gt_v: (N, C, T) bool, N >= 1.

  Returns:
    {'segment/audio', 'segment/visual', 'segment/av', 'segment/type', 'segment/event',
     and the same five with the 'event/' prefix: float}.
  """
  arrays = [np.asarray(x, dtype=bool) for x in (pred_a, pred_v, gt_a, gt_v)]
  if len({x.shape for x in arrays}) != 1 or arrays[0].ndim != 3:
    raise ValueError(f'Expected four (N, C, T) arrays, got {[x.shape for x in arrays]}.')
  if arrays[0].shape[0] == 0:
    raise ValueError('Cannot evaluate zero clips.')
  pred_a, pred_v, gt_a, gt_v = arrays
  pred = {'audio': pred_a, 'visual': pred_v, 'av': pred_a & pred_v}
  gt = {'audio': gt_a, 'visual': gt_v, 'av': gt_a & gt_v}
  results = {}
  for level, count_fn in (('segment', _segment_counts), ('event', _event_counts)):
    counts = {m: count_fn(pred[m], gt[m]) for m in MODALITIES}
    for key, value in _level_scores(counts).items():
      results[f'{level}/{key}'] = value
  return results


def evaluate_with_classes(pred_a, pred_v, gt_a, gt_v) -> dict:
  """{'results': the ten numbers (`evaluate`), 'per_class_audio' | 'per_class_visual': (C,)
  segment-level F per class (`per_class_f`)}. All arguments (N, C, T) bool."""
  return {'results': evaluate(pred_a, pred_v, gt_a, gt_v),
          'per_class_audio': per_class_f(pred_a, gt_a),
          'per_class_visual': per_class_f(pred_v, gt_v)}


def per_class_f(pred, gt):
  """Segment-level F per class, pooled over all clips and segments of the split, x100.

  Args:
    pred, gt: (N, C, T) bool.

  Returns:
    (C,) float64; NaN for a class with no positive segment in either pred or gt.
  """
  tp, fp, fn = (np.sum(x, axis=0) for x in _segment_counts(np.asarray(pred, bool),
                                                           np.asarray(gt, bool)))
  denom = 2 * tp + fp + fn
  return np.where(denom > 0, 100 * 2 * tp / np.maximum(denom, 1), np.nan)


def mean_sd(per_seed: list[dict]) -> tuple[dict, dict | None]:
  """The mean and the sd (numpy's default, the population sd) of each number over the seeds'
  {name: value} dicts; the sd is None for one seed."""
  table = {k: np.array([r[k] for r in per_seed]) for k in per_seed[0]}
  mean = {k: float(np.mean(v)) for k, v in table.items()}
  return mean, ({k: float(np.std(v)) for k, v in table.items()} if len(per_seed) > 1 else None)


def summarise_seeds(evaluations: list[dict]) -> dict:
  """Mean and sd over the models of several seeds.

  Args:
    evaluations: one {'results', 'per_class_audio', 'per_class_visual'} per seed, as
      `train.evaluate_split` returns them.
  Returns:
    {'results': the mean of each number, 'sd': its sd over the seeds (`mean_sd`),
    'per_class_audio' | 'per_class_visual': (C,) the mean
    over the seeds where a class's F is defined (NaN where it is nowhere)}.
  """
  mean, sd = mean_sd([e['results'] for e in evaluations])
  summary = {'results': mean, 'sd': sd}
  for key in ('per_class_audio', 'per_class_visual'):
    values = np.stack([e[key] for e in evaluations])
    defined = ~np.isnan(values)
    summary[key] = np.where(defined.any(0), np.where(defined, values, 0).sum(0)
                            / np.maximum(defined.sum(0), 1), np.nan)
  return summary


def format_mean_sd(values) -> str:
  """'mean ± sd' over the values that are not None (an undefined precision, say): 'n/a' if
  none is defined, the value alone if one is, and '(n of m)' after the cell if only some are."""
  defined = [v for v in values if v is not None]
  if not defined:
    return 'n/a'
  cell = f'{np.mean(defined):.1f}' + (f' ± {np.std(defined):.1f}' if len(defined) > 1 else '')
  return cell if len(defined) == len(values) else f'{cell} ({len(defined)} of {len(values)})'


def format_table(results, title='', signed=False, sd=None):
  """The ten numbers in the paper's layout (rows: levels, columns: COLUMNS), one decimal;
  `signed` shows the sign of every cell (for differences); `sd` (same keys) adds '± sd'."""
  sign = '+' if signed else ''
  names = [name for _, name in COLUMNS]
  widths = [max(len(name), 12 if sd else 6) for name in names]
  label_width = max(len(name) for _, name in LEVELS)
  lines = [title] if title else []
  lines.append(' ' * label_width + ''.join(f'  {n:>{w}}' for n, w in zip(names, widths)))

  def cell(key, w):
    if sd is None:
      return f'{results[key]:>{sign}{w}.1f}'
    return f'{f"{results[key]:{sign}.1f} ± {sd[key]:.1f}":>{w}}'

  for level, level_name in LEVELS:
    cells = ''.join(f'  {cell(f"{level}/{key}", w)}' for (key, _), w in zip(COLUMNS, widths))
    lines.append(f'{level_name:<{label_width}}{cells}')
  return '\n'.join(lines)


def format_seeds(per_seed: list[dict], seeds: list[int], title='') -> str:
  """The ten numbers of each seed, one row per seed: the segment-level columns, then the
  event-level ones (A: audio, V: visual, AV: audio-visual, T: Type@AV, E: Event@AV)."""
  keys = [f'{level}/{key}' for level, _ in LEVELS for key, _ in COLUMNS]
  short = ('A', 'V', 'AV', 'T', 'E')
  lines = [title] if title else []
  lines.append(f'{"":4}  {"Segment-level":^33}  {"Event-level":^33}'.rstrip())
  lines.append('seed' + ''.join(f'  {h:>5}' for h in short * 2))
  for seed, results in zip(seeds, per_seed):
    lines.append(f'{seed:>4}' + ''.join(f'  {results[k]:>5.1f}' for k in keys))
  return '\n'.join(lines)


def table_title(config_name: str, stage: str, split: str, data: str, detail: str) -> str:
  return f'{config_name} [{stage}] {split} on {data}, {detail}'


def format_results(title: str, seeds: list[int], summary: dict,
                   evaluations: list[dict]) -> str:
  """The ten numbers of the models of `seeds`: mean ± sd over the seeds (`summary`, from
  `summarise_seeds(evaluations)`) and, where there are several, a row per seed."""
  if len(seeds) == 1:
    return format_table(summary['results'], title=title)
  return '\n'.join([
      format_table(summary['results'], title=f'{title}, mean ± sd over {len(seeds)} seeds',
                   sd=summary['sd']),
      format_seeds([e['results'] for e in evaluations], seeds, 'per seed:')])


def format_gains(base: dict, final: dict, title: str) -> str:
  """The gain table: the mean ± sd over the seeds of each seed's own final - base number;
  `base`, `final`: two reports of the same seeds. `title` is closed with the seed count."""
  gains = [{k: f['results'][k] - b['results'][k] for k in b['results']}
           for b, f in zip(base['per_seed'], final['per_seed'], strict=True)]
  mean, sd = mean_sd(gains)
  over = f', mean ± sd over {len(gains)} seeds' if len(gains) > 1 else ''
  return format_table(mean, signed=True, sd=sd, title=f'{title}{over})')


def format_per_class(f_audio, f_visual):
  """A per-class table of segment-level F (from `per_class_f`); NaN shows as '-'.

  Args:
    f_audio, f_visual: (C,) with C = len(CLASSES).
  """
  if not len(f_audio) == len(f_visual) == len(CLASSES):
    raise ValueError(f'Expected {len(CLASSES)} classes, got {len(f_audio)}, {len(f_visual)}.')
  name_width = max(len(name) for name in CLASSES)

  def cell(value):
    return f'{"-":>7}' if math.isnan(value) else f'{value:>7.1f}'

  lines = [f'{"Class":<{name_width}}  {"Audio":>7}  {"Visual":>7}']
  for name, fa, fv in zip(CLASSES, f_audio, f_visual):
    lines.append(f'{name:<{name_width}}  {cell(float(fa))}  {cell(float(fv))}')
  return '\n'.join(lines)

