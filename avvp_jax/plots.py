"""Pictures of a run: segment timelines (against the truth, or of parsed clips), refinement
examples, per-class F, training curves.

The figure functions take arrays or records and return a matplotlib `Figure` of a fixed size
in pixels (`png` renders it); `plot_run` gathers their input from a workdir and writes them
as PNG files. Figures are built without pyplot, so nothing here needs a display or touches
matplotlib's global state.
"""

import io
import os
import re

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from avvp_jax import checkpoints, logs, reports, seeds, train, workdir as wd
from avvp_jax.data import Split
from avvp_jax.data.classes import CLASSES, NUM_SEGMENTS
from avvp_jax.logs import EpochRecord
from avvp_jax.workdir import STAGE_TITLES

DPI = 100
MODALITIES = ('audio', 'visual')
# Timeline cells: no event, predicted and true, true but missed, predicted but not true.
OUTCOMES = ('none', 'hit', 'missed', 'false alarm')
OUTCOME_COLOURS = ('#ffffff', '#2b7bba', '#fdb863', '#d7301f')
STAGE_COLOURS = {'base': '#7f7f7f', 'final': '#2b7bba'}


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


def shown_classes(preds: dict[str, dict[str, np.ndarray]], truth: dict[str, np.ndarray]
                  ) -> np.ndarray:
  """The classes a timeline shows: those with an event in the truth or in any prediction, of
  either modality (all 25 where none has any)."""
  present = np.zeros(len(CLASSES), bool)
  for grids in (truth, *preds.values()):
    for grid in grids.values():
      present |= np.asarray(grid, bool).any(-1)
  return np.flatnonzero(present) if present.any() else np.arange(len(CLASSES))


def timeline(name: str, preds: dict[str, dict[str, np.ndarray]], truth: dict[str, np.ndarray]
             ) -> Figure:
  """One clip's segment predictions against the truth, like Fig. 3 of the paper.

  Args:
    name: the clip's filename.
    preds: {model: {'audio', 'visual': bool (25, 10)}}, one row of panels per model (e.g.
      'stage 1 (base)', 'stage 3 (final)').
    truth: {'audio', 'visual': bool (25, 10)}.
  Returns:
    A figure 10 inches wide and 1.5 + rows x (1 + 0.22 C) high, C the classes that the truth
    or a prediction has (`shown_classes`): per model and modality, those classes by the 10
    one-second segments, each cell a hit, a miss, a false alarm or nothing.
  """
  classes = shown_classes(preds, truth)
  rows = len(preds)
  fig = Figure(figsize=(10, 1.5 + rows * (1 + 0.22 * len(classes))))
  axes = fig.subplots(rows, 2, squeeze=False)
  cmap = ListedColormap(OUTCOME_COLOURS)
  for r, (model, pred) in enumerate(preds.items()):
    for c, modality in enumerate(MODALITIES):
      ax = axes[r, c]
      cells = outcomes(np.asarray(pred[modality])[classes], np.asarray(truth[modality])[classes])
      ax.imshow(cells, cmap=cmap, vmin=0, vmax=len(OUTCOMES) - 1, aspect='auto',
                interpolation='nearest')
      ax.set_xticks(np.arange(NUM_SEGMENTS), [str(t) for t in range(NUM_SEGMENTS)], fontsize=7)
      ax.set_xticks(np.arange(NUM_SEGMENTS + 1) - 0.5, minor=True)
      ax.set_yticks(np.arange(len(classes) + 1) - 0.5, minor=True)
      ax.set_yticks(np.arange(len(classes)), [CLASSES[k] for k in classes] if c == 0 else [],
                    fontsize=7)
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
                      bottom=0.9 / fig.get_figheight(), wspace=0.08,
                      hspace=0.5 / (1 + 0.22 * len(classes)))
  return fig


def heard_and_seen(name: str, pred: dict[str, np.ndarray], prob: dict[str, np.ndarray],
                   note: str = '') -> Figure:
  """One clip's parsed events without truth: what is heard and what is seen per second.

  Args:
    name: the clip's name.
    pred: {'audio', 'visual': bool (25, 10)} the events found.
    prob: {'audio', 'visual': (25, 10)} their segment probabilities.
    note: a line under the title (e.g. that the features came from random weights).
  Returns:
    A figure 10 inches wide, two panels (heard, seen) of the classes found in either
    modality (the five most probable where none is found) by the 10 one-second segments:
    each cell shaded by its probability, found cells outlined.
  """
  found = np.flatnonzero(pred['audio'].any(-1) | pred['visual'].any(-1))
  if not len(found):
    found = np.sort(np.argsort(-(prob['audio'] + prob['visual']).max(-1))[:5])
    note = '; '.join(filter(None, ['no event found: the five most probable classes', note]))
  fig = Figure(figsize=(10, 1.8 + 0.3 * len(found)))
  axes = fig.subplots(1, 2, squeeze=False)[0]
  for ax, modality, verb in zip(axes, MODALITIES, ('heard', 'seen')):
    image = ax.imshow(np.asarray(prob[modality])[found], cmap='Blues', vmin=0, vmax=1,
                      aspect='auto', interpolation='nearest')
    for row, col in zip(*np.nonzero(np.asarray(pred[modality])[found])):
      ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor='#d7301f',
                             linewidth=1.5))
    ax.set_xticks(np.arange(NUM_SEGMENTS), [str(t) for t in range(NUM_SEGMENTS)], fontsize=7)
    ax.set_yticks(np.arange(len(found)),
                  [CLASSES[k] for k in found] if modality == 'audio' else [], fontsize=7)
    ax.set_title(f'{verb} ({modality})', fontsize=9)
    ax.set_xlabel('second', fontsize=8)
  height = fig.get_figheight()
  fig.suptitle(name + (f'\n{note}' if note else ''), fontsize=10 if not note else 8)
  fig.subplots_adjust(left=0.2, right=0.86, top=1 - 0.7 / height, bottom=0.6 / height,
                      wspace=0.08)
  fig.colorbar(image, cax=fig.add_axes((0.88, 0.6 / height, 0.015, 1 - 1.3 / height)),
               label='probability')
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
              label=STAGE_TITLES.get(stage, stage))
      for where, value in zip(at, values):  # Else an F of 0 looks like a missing bar.
        if not value > 0:
          ax.text(1, where, 'n/a' if np.isnan(value) else '0', va='center', fontsize=6)
      mean = np.nanmean(values) if np.isfinite(values).any() else float('nan')
      means.append(f'{STAGE_TITLES.get(stage, stage).split(" (")[0]} {mean:.1f}')
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


def curves(records: list[EpochRecord]) -> Figure:
  """Training curves from metrics.jsonl: each loss term and val Type@AV per epoch, a line
  per stage and seed.

  Returns a 12 x 7 inch figure, a panel per loss term and one for val segment and event
  Type@AV.
  """
  terms = sorted({k for r in records for k in r.train if not k.startswith('drops/')},
                 key=lambda k: (k != 'total', k))
  panels = [('train', k) for k in terms] + [('val', 'type')]
  fig = Figure(figsize=(12, 7))
  axes = fig.subplots(2, -(-len(panels) // 2), squeeze=False).ravel()
  lines = {}
  for r in records:
    lines.setdefault((r.stage, r.seed), []).append(r)
  seeds = len({s for _, s in lines})
  for ax, (group, key) in zip(axes, panels):
    for (stage, seed), rs in lines.items():
      rs = sorted(rs, key=lambda r: r.epoch)
      epochs = [r.epoch for r in rs]
      colour = STAGE_COLOURS.get(stage)
      # One legend entry per stage; its seeds share the colour.
      label = (STAGE_TITLES.get(stage, stage) + (f' ({seeds} seeds)' if seeds > 1 else '')
               if seed == min(s for st, s in lines if st == stage) else None)
      if group == 'train':
        ax.plot(epochs, [r.train.get(key, np.nan) for r in rs], color=colour, marker='.',
                label=label)
      else:
        for level, style in (('segment', '-'), ('event', '--')):
          ax.plot(epochs, [r.val[f'{level}/type'] for r in rs], color=colour,
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


def plot_run(config, workdir: str, splits: dict[str, Split], *, split: str = 'test',
               clips: list[str] | None = None, num_clips: int = 3, seed: int | None = None,
               model: str | None = None, out: str | None = None) -> list[str]:
  """The pictures of a run from what its workdir holds, as PNG files in `out` (default
  <workdir>/plots); returns their paths. A picture whose input is not there yet is left out.

  - timeline_<split>_<clip>.png: per clip of `split` (`clips`, or the first `num_clips` with
    an event of one modality only), each trained stage's `model` (default the one the
    method tests, `config.eval.model`) of `seed` (default the first) against the truth;
  - refinement.png: training clips with labels that stage 2 dropped for `seed`, against the
    truth where the split has it;
  - per_class.png: per-class segment F on test of each finished stage (mean over the seeds);
  - curves.png: the loss terms and val Type@AV per epoch, every stage and seed.
  """
  out = out or wd.plots_dir(workdir)
  model = model or train.eval_protocol(config).model
  figures = _timelines(config, workdir, splits[split], split, clips, num_clips, seed, model)
  refined = checkpoints.load_refined(workdir)
  if refined is not None and 'drop_a' in refined:  # (JoMoLD's stage 2 drops nothing.)
    s, _ = seeds.seed_index(refined['stats']['seeds'], seed, wd.refine_dir(workdir))
    figures['refinement.png'] = refinement(
        _refinement_examples(splits['train'], refined['drop_a'][s], refined['drop_v'][s]))
  f = {}
  for stage in wd.TRAINING_STAGES:
    report = reports.read_report(wd.stage_paths(workdir, stage)['report'])
    if report is not None:
      f[stage] = {'audio': report['per_class_audio'], 'visual': report['per_class_visual']}
  if f:
    figures['per_class.png'] = per_class(f)
  records = logs.read_metrics(workdir)
  if records:
    figures['curves.png'] = curves(records)
  paths = [os.path.join(out, name) for name in figures]
  for path, fig in zip(paths, figures.values()):
    wd.atomic_write(path, png(fig))
  print(f'plots: {len(paths)} pictures in {out}', flush=True)
  return paths


def _timelines(config, workdir: str, data: Split, split: str, clips, num_clips: int, seed,
               model: str) -> dict:
  """{file name: timeline figure} of the chosen clips, a row per trained stage."""
  trained = [s for s in wd.TRAINING_STAGES if checkpoints.checkpoint_epoch(workdir, s, model)]
  if not trained:
    return {}
  if not data.has_dense_truth:
    raise ValueError(f'The {split} split has no dense truth to draw the timelines against.')
  if clips:
    index = {str(n): i for i, n in enumerate(data.names)}
    missing = [c for c in clips if c not in index]
    if missing:
      raise ValueError(f'Clips {missing} are not in the {split} split.')
    chosen = data.take(np.array([index[c] for c in clips]))
  else:
    chosen = data.take(pick_clips(data.gt_a, data.gt_v, num_clips))
  if not len(chosen):
    return {}
  preds = {}
  for stage in trained:
    checkpoint = checkpoints.restore_params(workdir, stage, model)
    net, params, shown = seeds.one_seed(config, checkpoint, seed,
                                        wd.checkpoint_dir(workdir, stage, model), stage)
    pred, _ = train.segment_outputs(net, params, chosen, config.train.eval_batch_size,
                                    train.eval_protocol(config).clip_filter)
    # best/ holds each seed's own best; its epoch is the last at which any seed improved.
    which = f'epoch {checkpoint.epoch}' if model == 'last' else 'best val'
    preds[f'{STAGE_TITLES[stage]}, {which}, seed {shown}'] = pred
  figures = {}
  for k, name in enumerate(chosen.names):
    file = f'timeline_{split}_{re.sub(r"[^A-Za-z0-9._-]", "_", str(name))}.png'
    if file in figures:  # Two names that differ only in the characters replaced.
      file = file.replace('.png', f'_{k}.png')
    figures[file] = timeline(
        f'{name} ({split})', {label: {m: p[m][k] for m in p} for label, p in preds.items()},
        {'audio': chosen.gt_a[k], 'visual': chosen.gt_v[k]})
  return figures


def _refinement_examples(train_split: Split, drop_a: np.ndarray, drop_v: np.ndarray,
                         per_modality: int = 4) -> dict[str, list[dict]]:
  """{'audio': the first training clips with an audio drop, 'visual': the first others with
  a visual drop}; drop_a, drop_v: bool (N, 25)."""
  picked = {}
  for modality, drop in zip(MODALITIES, (drop_a, drop_v)):
    taken = [i for ids in picked.values() for i in ids]
    picked[modality] = [i for i in np.flatnonzero(drop.any(-1)) if i not in taken][:per_modality]
  return {m: [_refinement_example(train_split, drop_a, drop_v, i) for i in ids]
          for m, ids in picked.items()}


def _refinement_example(train_split: Split, drop_a: np.ndarray, drop_v: np.ndarray,
                        i: int) -> dict:
  """Clip i's weak labels, their drops and, where the split has dense truth, whether each
  event is heard / seen anywhere in the clip (the input of `refinement`)."""
  classes = np.flatnonzero(train_split.labels[i] > 0)
  truth = ({'truth_a': train_split.gt_a[i].any(-1)[classes],
            'truth_v': train_split.gt_v[i].any(-1)[classes]}
           if train_split.has_dense_truth else {'truth_a': None, 'truth_v': None})
  return {'name': str(train_split.names[i]), 'classes': list(classes),
          'drop_a': drop_a[i, classes], 'drop_v': drop_v[i, classes], **truth}
