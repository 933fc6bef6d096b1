"""Pictures of a run: segment timelines, refinement examples, per-class F, training curves.

Each function takes arrays or records and returns a matplotlib `Figure` of a fixed size in
pixels (`png` renders it). Figures are built without pyplot, so nothing here needs a
display or touches matplotlib's global state.
"""

import io

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from avvp_jax.data.classes import CLASSES, NUM_SEGMENTS

DPI = 100
MODALITIES = ('audio', 'visual')
# Timeline cells: no event, predicted and true, true but missed, predicted but not true.
OUTCOMES = ('none', 'hit', 'missed', 'false alarm')
OUTCOME_COLOURS = ('#ffffff', '#2b7bba', '#fdb863', '#d7301f')
STAGE_COLOURS = {'base': '#7f7f7f', 'final': '#2b7bba'}
STAGE_NAMES = {'base': 'stage 1 (base)', 'final': 'stage 3 (final)'}


def png(fig: Figure) -> bytes:
  """The figure as PNG bytes, at its own size (`fig.get_size_inches() * DPI` pixels)."""
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=DPI)
  return buf.getvalue()


def outcomes(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """(25, 10) int index into OUTCOMES of every class and segment."""
  pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
  return np.select([pred & truth, truth, pred], [1, 2, 3], 0)


def pick_clips(gt_a: np.ndarray, gt_v: np.ndarray, num: int) -> np.ndarray:
  """Indices of the first `num` clips with an event that is heard but not seen or seen but
  not heard, the case MA is about. gt_a, gt_v: bool (N, 25, 10)."""
  one_modality = (gt_a.any(-1) != gt_v.any(-1)).any(-1)
  return np.flatnonzero(one_modality)[:num]


def timeline(name: str, preds: dict[str, dict[str, np.ndarray]], truth: dict[str, np.ndarray]
             ) -> Figure:
  """One clip's segment predictions against the truth, like Fig. 3 of the paper.

  Args:
    name: the clip's filename.
    preds: {model: {'audio', 'visual': bool (25, 10)}}, one row of panels per model (e.g.
      'stage 1 (base)', 'stage 3 (final)').
    truth: {'audio', 'visual': bool (25, 10)}.
  Returns:
    A (10 x 1.5 + 4.5 rows) inch figure: per model and modality, the 25 classes by the 10
    one-second segments, each cell a hit, a miss, a false alarm or nothing.
  """
  rows = len(preds)
  fig = Figure(figsize=(10, 1.5 + 4.5 * rows))
  axes = fig.subplots(rows, 2, squeeze=False)
  cmap = ListedColormap(OUTCOME_COLOURS)
  for r, (model, pred) in enumerate(preds.items()):
    for c, modality in enumerate(MODALITIES):
      ax = axes[r, c]
      ax.imshow(outcomes(pred[modality], truth[modality]), cmap=cmap, vmin=0,
                vmax=len(OUTCOMES) - 1, aspect='auto', interpolation='nearest')
      ax.set_xticks(np.arange(NUM_SEGMENTS), [str(t) for t in range(NUM_SEGMENTS)], fontsize=7)
      ax.set_xticks(np.arange(NUM_SEGMENTS + 1) - 0.5, minor=True)
      ax.set_yticks(np.arange(len(CLASSES) + 1) - 0.5, minor=True)
      ax.set_yticks(np.arange(len(CLASSES)), CLASSES if c == 0 else [], fontsize=7)
      ax.grid(which='minor', color='#dddddd', linewidth=0.5)
      ax.tick_params(which='minor', length=0)
      ax.set_title(f'{model}: {modality}', fontsize=9)
      if r == rows - 1:
        ax.set_xlabel('segment (s)', fontsize=8)
  fig.legend(handles=[Patch(facecolor=col, edgecolor='#999999', label=lab)
                      for col, lab in zip(OUTCOME_COLOURS[1:], OUTCOMES[1:])],
             loc='lower center', ncol=3, fontsize=8, frameon=False)
  fig.suptitle(name, fontsize=10)
  fig.subplots_adjust(left=0.2, right=0.98, top=1 - 0.6 / fig.get_figheight(),
                      bottom=0.9 / fig.get_figheight(), wspace=0.08, hspace=0.2)
  return fig


def refinement(examples: dict[str, list[dict]]) -> Figure:
  """Clips whose labels the refinement dropped for one modality.

  Args:
    examples: {'audio', 'visual': up to 4 clips with a label dropped for that modality},
      each {'name', 'classes': [class index] (the clip's weak labels), 'drop_a', 'drop_v':
      bool per class, 'truth_a', 'truth_v': bool per class (the event is heard / seen
      somewhere in the clip) or None where the split has no dense truth}.
  Returns:
    A 14 x 7 inch figure, a row of panels per modality: a row per weak label, an audio and a
    visual cell, kept (blue) or dropped (white); with truth, the text says whether it agrees.
  """
  fig = Figure(figsize=(14, 7))
  axes = fig.subplots(2, 4, squeeze=False)
  with_truth = False
  for row, modality in zip(axes, MODALITIES):
    for ax, ex in zip(row, examples[modality]):
      drop = np.stack([ex['drop_a'], ex['drop_v']], -1)  # (L, 2)
      ax.imshow(~drop, cmap=ListedColormap(['#ffffff', '#9ecae1']), vmin=0, vmax=1,
                aspect='auto')
      for i in range(len(ex['classes'])):
        for j, truth in enumerate((ex['truth_a'], ex['truth_v'])):
          text = 'dropped' if drop[i, j] else 'kept'
          colour = '#000000'
          if truth is not None:
            with_truth = True
            text += '\n(truly ' + ('present)' if truth[i] else 'absent)')
            colour = '#1a7f37' if drop[i, j] != truth[i] else '#c62828'
          ax.text(j, i, text, ha='center', va='center', fontsize=7, color=colour)
      ax.set_xticks([0, 1], list(MODALITIES), fontsize=8)
      ax.set_yticks(np.arange(len(ex['classes'])), [CLASSES[c] for c in ex['classes']],
                    fontsize=7)
      ax.set_xticks([0.5], minor=True)
      ax.set_yticks(np.arange(len(ex['classes'])) + 0.5, minor=True)
      ax.grid(which='minor', color='#999999', linewidth=0.5)
      ax.tick_params(which='minor', length=0)
      ax.set_title(f'{ex["name"]}\n{modality} label dropped', fontsize=8)
    for ax in row[len(examples[modality]):]:
      ax.set_axis_off()
  fig.suptitle('Refinement: weak labels kept or dropped per modality '
               + ('(green: the truth agrees, red: it does not)' if with_truth
                  else '(this split has no dense truth)'), fontsize=10)
  fig.subplots_adjust(left=0.1, right=0.98, top=0.88, bottom=0.05, wspace=0.9, hspace=0.4)
  return fig


def per_class(f: dict[str, dict[str, np.ndarray]]) -> Figure:
  """Per-class segment F of each stage, audio and visual.

  Args:
    f: {stage ('base', 'final'): {'audio', 'visual': (25,) F in points, NaN where undefined}}.
  Returns:
    A 12 x 8 inch figure, a panel per modality, a bar per class and stage; an F of 0 is
    written '0', an undefined one (no event in either the truth or the predictions) 'n/a'.
  """
  fig = Figure(figsize=(12, 8))
  axes = fig.subplots(1, 2, sharey=True)
  y = np.arange(len(CLASSES))
  height = 0.8 / len(f)
  for ax, modality in zip(axes, MODALITIES):
    means = []
    for k, (stage, values) in enumerate(f.items()):
      values = np.asarray(values[modality], float)
      at = y + (k - (len(f) - 1) / 2) * height
      ax.barh(at, np.nan_to_num(values), height, color=STAGE_COLOURS.get(stage),
              label=STAGE_NAMES.get(stage, stage))
      for where, value in zip(at, values):  # Else an F of 0 looks like a missing bar.
        if not value > 0:
          ax.text(1, where, 'n/a' if np.isnan(value) else '0', va='center', fontsize=6)
      mean = np.nanmean(values) if np.isfinite(values).any() else float('nan')
      means.append(f'{STAGE_NAMES.get(stage, stage).split(" (")[0]} {mean:.1f}')
    ax.set_title(f'{modality}: segment-level F per class\n(class mean: {", ".join(means)})',
                 fontsize=10)
    ax.set_xlim(0, 100)
    ax.set_xticks([0, 20, 40, 60, 80, 100] if modality == MODALITIES[-1]
                  else [0, 20, 40, 60, 80])  # The panels touch: one "100 0" would collide.
    ax.set_xlabel('F (%)', fontsize=8)
    ax.grid(axis='x', color='#dddddd', linewidth=0.5)
  axes[0].set_yticks(y, CLASSES, fontsize=7)
  axes[0].invert_yaxis()
  fig.legend(*axes[0].get_legend_handles_labels(), loc='upper center', ncol=len(f),
             fontsize=9, frameon=False)
  fig.subplots_adjust(left=0.16, right=0.98, top=0.9, bottom=0.07, wspace=0.05)
  return fig


def curves(records: list[dict]) -> Figure:
  """Training curves from metrics.jsonl: each loss term and val Type@AV per epoch, a line
  per stage and seed.

  Returns a 12 x 7 inch figure, a panel per loss term and one for val segment and event
  Type@AV.
  """
  terms = sorted({k for r in records for k in r['train']}, key=lambda k: (k != 'total', k))
  panels = [('train', k) for k in terms] + [('val', 'type')]
  fig = Figure(figsize=(12, 7))
  axes = fig.subplots(2, -(-len(panels) // 2), squeeze=False).ravel()
  lines = {}
  for r in records:
    lines.setdefault((r['stage'], r['seed']), []).append(r)
  seeds = len({s for _, s in lines})
  for ax, (group, key) in zip(axes, panels):
    for (stage, seed), rs in lines.items():
      rs = sorted(rs, key=lambda r: r['epoch'])
      epochs = [r['epoch'] for r in rs]
      colour = STAGE_COLOURS.get(stage)
      # One legend entry per stage; its seeds share the colour.
      label = (STAGE_NAMES.get(stage, stage) + (f' ({seeds} seeds)' if seeds > 1 else '')
               if seed == min(s for st, s in lines if st == stage) else None)
      if group == 'train':
        ax.plot(epochs, [r['train'].get(key, np.nan) for r in rs], color=colour, marker='.',
                label=label)
      else:
        for level, style in (('segment', '-'), ('event', '--')):
          ax.plot(epochs, [r['val'][f'{level}/type'] for r in rs], color=colour,
                  linestyle=style, marker='.', label=label and f'{label}, {level}')
    ax.set_title(f'train loss: {key}' if group == 'train' else 'val Type@AV (F, %)',
                 fontsize=9)
    ax.set_xlabel('epoch', fontsize=8)
    ax.grid(color='#dddddd', linewidth=0.5)
    ax.tick_params(labelsize=7)
  axes[len(panels) - 1].legend(fontsize=7)
  for ax in axes[len(panels):]:
    ax.set_axis_off()
  fig.subplots_adjust(left=0.06, right=0.98, top=0.94, bottom=0.08, wspace=0.3, hspace=0.4)
  return fig
