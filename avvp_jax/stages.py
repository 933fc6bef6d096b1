"""The stages of MA in a workdir (METHOD.md section 4): base -> refine -> final.

Each stage finds its input in the workdir, computes with `train` or `refine`, and leaves its
output there through `workdir`; a finished stage is found and not redone, an interrupted
training stage continues after its last saved epoch.
"""

import hashlib
import os
import re
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from avvp_jax import metrics, plots, refine, train, workdir as wd
from avvp_jax.data import Split, describe
from avvp_jax.models import HAN


def seed_list(config) -> list[int]:
  """The seeds of a run's models: config.seed, config.seed + 1, ..., `config.num_seeds` of
  them. Seed s of a run computes what a one-seed run with `config.seed = s` computes."""
  if config.num_seeds < 1:
    raise ValueError(f'config.num_seeds must be at least 1, not {config.num_seeds}.')
  return [config.seed + s for s in range(config.num_seeds)]


def _seed_index(config, num_seeds: int, seed: int | None, source: str) -> tuple[int, int]:
  """(index, seed) of `seed` (the first if None) among the `num_seeds` seeds config.seed,
  config.seed + 1, ... that `source` holds stacked; refuses a seed that is not there."""
  seeds = [config.seed + s for s in range(num_seeds)]
  seed = seeds[0] if seed is None else seed
  if seed not in seeds:
    raise ValueError(f'{source} holds the models of seeds {seeds}, not of seed {seed}.')
  return seeds.index(seed), seed


def one_seed(config, params, seed: int | None, source: str):
  """(model, params, seed): one seed's model out of stacked parameters (S, ...) whose seeds
  are config.seed, config.seed + 1, ...; the first seed if `seed` is None. Refuses a seed
  that is not there, and parameters that are not those of `config.model`, naming `source`."""
  index, seed = _seed_index(config, jax.tree.leaves(params)[0].shape[0], seed, source)
  model = HAN.from_config(config.model)
  params = jax.tree.map(lambda x: x[index], params)
  shapes = lambda tree: {jax.tree_util.keystr(k): tuple(v.shape)
                         for k, v in jax.tree_util.tree_leaves_with_path(tree)}
  got, want = shapes(params), shapes(
      jax.eval_shape(lambda: train.init_params(model, jax.random.key(0))))
  if got != want:
    differ = sorted(set(got.items()) ^ set(want.items()))[0][0]
    raise ValueError(f'The parameters in {source} are not those of the model of config.model '
                     f'(first difference at {differ}: {got.get(differ)} in the checkpoint, '
                     f'{want.get(differ)} in the model). Give the config the model was '
                     'trained with.')
  return model, params, seed


def check_placement(config) -> str:
  """Refuses, before any work, a seed count that the device mesh cannot place; else says
  where the seeds go."""
  seeds = seed_list(config)
  mesh = train.make_mesh(len(seeds))
  devices = jax.device_count()
  return (f'seeds {seeds} on {devices} device{"s" if devices > 1 else ""}, mesh '
          f'{" x ".join(f"{name} {size}" for name, size in mesh.shape.items())}')


def check_processes(config, splits: dict[str, Split]) -> None:
  """Refuses a multi-process run whose processes differ in their config or in the data they
  loaded (each host reads its own copy)."""
  if jax.process_count() == 1:
    return
  data = hashlib.sha256()
  for name in sorted(splits):
    for field in ('audio', 'video_2d', 'video_3d', 'labels'):
      data.update(np.ascontiguousarray(getattr(splits[name], field)).tobytes())
  for what, digest in (('config', hashlib.sha256(config.to_json().encode()).digest()),
                       ('data', data.digest())):
    every = multihost_utils.process_allgather(np.frombuffer(digest, np.uint8))  # (P, 32)
    differ = [p for p in range(len(every)) if bytes(every[p]) != bytes(every[0])]
    if differ:
      raise ValueError(
          f'The {len(every)} processes of this run differ in their {what}: processes '
          f'{differ} against process 0 (sha256 {bytes(every[0]).hex()[:12]}... against '
          f'{", ".join(bytes(every[p]).hex()[:12] + "..." for p in differ)}). Start every '
          'process with the same flags and the same data.')


def stage_targets(config, workdir: str, stage: str, labels: np.ndarray,
                  num_seeds: int) -> dict[str, np.ndarray]:
  """The training targets (S, N, 25) of a stage, one set per seed: the weak labels (base), or
  each seed's refined ones (final) from stage 2's drop masks in the workdir."""
  if stage == 'base':
    targets = train.targets_from_labels(labels, config.loss)
    return {k: np.stack([v] * num_seeds) for k, v in targets.items()}
  refined = wd.load_refined(workdir)
  if refined is None:
    raise FileNotFoundError(f'{wd.refine_dir(workdir)} holds no refined labels: run stage 2 '
                            'before the final stage.')
  if len(refined['drop_a']) != num_seeds:
    raise ValueError(f'{wd.refine_dir(workdir)} holds the refined labels of '
                     f'{len(refined["drop_a"])} seeds, not {num_seeds}.')
  per_seed = [train.targets_from_labels(labels, config.loss, a, v,
                                        config.refine.audio_drop_clears_global)
              for a, v in zip(refined['drop_a'], refined['drop_v'])]
  return {k: np.stack([t[k] for t in per_seed]) for k in per_seed[0]}


def _mean_terms(terms: dict, seed: int) -> dict:
  return {k: float(np.mean(v[seed])) for k, v in terms.items()}


def _check_finite(terms: dict, stage: str, epoch: int, seeds: list[int], last_good: str) -> None:
  """terms: {name: (S, steps)}; the first step of the first seed with a non-finite loss."""
  bad = ~np.isfinite(terms['total'])
  if bad.any():
    s, step = np.argwhere(bad)[0]
    raise FloatingPointError(
        f'Stage {stage!r}, seed {seeds[s]}, epoch {epoch}, step {step} of the epoch: the loss '
        f'is {terms["total"][s, step]} ({ {k: float(v[s, step]) for k, v in terms.items()} }). '
        f'Last good checkpoint: {last_good}.')


def table_title(config, stage: str, split: str, data: str, detail: str) -> str:
  return f'{config.name} [{stage}] {split} on {data}, {detail}'


def print_results(title: str, seeds: list[int], evaluations: list[dict]) -> dict:
  """Prints the ten numbers (mean ± sd over the seeds, and each seed's where several);
  returns `metrics.summarise_seeds(evaluations)`."""
  summary = metrics.summarise_seeds(evaluations)
  if len(seeds) > 1:
    title += f', mean ± sd over {len(seeds)} seeds'
  print(metrics.format_table(summary['results'], title=title, sd=summary['sd']))
  if len(seeds) > 1:
    print(metrics.format_seeds([e['results'] for e in evaluations], seeds, 'per seed:'))
  return summary


def _epoch_line(stage: str, epoch: int, epochs: int, records: list[dict]) -> str:
  """One line per epoch: the loss and val Type@AV (mean ± sd over the seeds where several)."""
  def show(values, fmt):
    sd = f' ± {np.std(values):{fmt}}' if len(values) > 1 else ''
    return f'{np.mean(values):{fmt}}{sd}'

  val = {k: [r['val'][k] for r in records] for k in ('segment/type', 'event/type')}
  return (f'[{stage}] epoch {epoch}/{epochs}  loss '
          f'{show([r["train"]["total"] for r in records], ".4f")}  val Type@AV '
          f'{show(val["segment/type"], ".1f")} / {show(val["event/type"], ".1f")} '
          f'(segment / event)  {records[0]["seconds"]:.1f}s')


def train_stage(config: ml_collections.ConfigDict, workdir: str, stage: str,
                splits: dict[str, Split]) -> dict:
  """Trains fresh models of a stage ('base' or 'final'), one per seed of `seed_list`, in one
  vmapped program, on their targets; or finds them done.

  Each epoch: train, evaluate val, append to metrics.jsonl (a record per seed) and the
  TensorBoard files, keep each seed's best-val parameters, checkpoint. At the end, evaluate
  test and write the stage's report_test.json (which marks it finished). Returns that report
  (`workdir.write_report`).
  """
  paths = wd.stage_paths(workdir, stage)
  report = wd.read_report(paths['report'])
  if report is not None:
    print(f'[{stage}] finished earlier ({paths["report"]}), not redone', flush=True)
    return report
  seeds = seed_list(config)
  targets = stage_targets(config, workdir, stage, splits['train'].labels, len(seeds))
  tc = config.train
  model = HAN.from_config(config.model)
  mesh = train.make_mesh(len(seeds))
  schedule, tx, train_steps = train.make_training(
      model, ml_collections.FrozenConfigDict(tc), ml_collections.FrozenConfigDict(config.loss),
      len(splits['train']), mesh, seeds=True)
  init_rngs, train_rngs = zip(*(jax.random.split(train.stage_rng(seed, stage))
                                for seed in seeds))
  stacked = NamedSharding(mesh, P('seed'))
  state = jax.device_put(train.create_train_states(model, tx, init_rngs), stacked)
  data = train.device_arrays(splits['train'], targets, mesh, seeds=True)

  with wd.StageCheckpoints(workdir, stage) as ckpt:
    meta = {'epoch': 0, 'best_val': [-1.0] * len(seeds), 'best_epoch': [0] * len(seeds)}
    best = None  # Each seed's best-val parameters so far, (S, ...).
    restored = ckpt.restore(state)
    if restored is not None:
      state, meta = restored
      best = ckpt.restore_best(state.params)
      print(f'[{stage}] resuming after epoch {meta["epoch"]} from {ckpt.directory}', flush=True)
    wd.truncate_metrics(workdir, stage, meta['epoch'])
    wd.rewrite_tensorboard(workdir)
    for epoch in range(meta['epoch'] + 1, tc.epochs + 1):
      start = time.perf_counter()
      state, terms = train.train_epoch(
          state, train_steps, data, jnp.stack([jax.random.fold_in(k, epoch) for k in train_rngs]),
          batch_size=tc.batch_size, steps_per_call=tc.steps_per_call, lr_fn=schedule,
          desc=f'{stage} {epoch}/{tc.epochs}')
      _check_finite(terms, stage, epoch, seeds, f'{ckpt.directory} (epoch {meta["epoch"]})'
                    if meta['epoch'] else 'none (the stage had not saved any epoch)')
      vals = train.evaluate_split(model, state.params, splits['val'], tc.eval_batch_size,
                                  seeds=True)
      seconds = time.perf_counter() - start
      step = int(train.host(state.step)[0])
      records = [{'stage': stage, 'epoch': epoch, 'seed': seed, 'step': step,
                  'lr': float(schedule(step - 1)), 'train': _mean_terms(terms, s),
                  'val': val['results'], 'seconds': seconds, 'time': time.time()}
                 for s, (seed, val) in enumerate(zip(seeds, vals))]
      print(_epoch_line(stage, epoch, tc.epochs, records), flush=True)
      for record in records:
        wd.append_metrics(workdir, record)
      wd.append_tensorboard(workdir, records)
      improved = np.array([r['val']['segment/type'] > b
                           for r, b in zip(records, meta['best_val'])])
      if improved.any():
        best = state.params if best is None else jax.tree.map(
            lambda p, b: jnp.where(improved.reshape((-1,) + (1,) * (p.ndim - 1)), p, b),
            state.params, best)
        best = jax.tree.map(jnp.copy, best)  # `state` is donated to the next epoch's steps.
        for s in np.flatnonzero(improved):
          meta['best_val'][s], meta['best_epoch'][s] = records[s]['val']['segment/type'], epoch
        ckpt.save_best(epoch, best)
      meta['epoch'] = epoch
      ckpt.save(epoch, state, meta)

  tests = train.evaluate_split(model, state.params, splits['test'], tc.eval_batch_size,
                               seeds=True)
  data_name = describe(config.data)
  summary = print_results(table_title(config, stage, 'test', data_name, f'epoch {tc.epochs}'),
                          seeds, tests)
  return wd.write_report(paths['report'], summary, seeds=seeds, per_seed=tests, split='test',
                         num_clips=len(splits['test']), step=int(train.host(state.step)[0]),
                         epoch=tc.epochs, config_name=config.name, data=data_name)


def refine_stage(config, workdir: str, splits: dict[str, Split]) -> dict:
  """Stage 2: refined targets on the train split, one set per seed, from the frozen base
  models (the last or the best-val epoch, `config.train.base_selection`), saved in the
  workdir; or found there. Returns the statistics."""
  done = wd.load_refined(workdir)
  if done is not None:
    print(f'[refine] found in {wd.refine_dir(workdir)}, not redone', flush=True)
    return done['stats']
  params, _ = wd.restore_params(workdir, 'base', config.train.base_selection)
  seeds = seed_list(config)
  targets, stats = refine.refine_targets(
      HAN.from_config(config.model), params, splits['train'], config.refine, seeds=seeds,
      eval_batch_size=config.train.eval_batch_size)
  for seed, seed_stats in zip(seeds, stats['per_seed']):
    print((f'seed {seed}: ' if len(seeds) > 1 else '') + refine.format_stats(seed_stats))
  if len(seeds) > 1:
    print(refine.format_seed_stats(stats['per_seed']))
  wd.save_refined(workdir, targets, stats)
  return stats


def plot_stage(config, workdir: str, splits: dict[str, Split], *, split: str = 'test',
               clips: list[str] | None = None, num_clips: int = 3, seed: int | None = None,
               model: str = 'last', out: str | None = None) -> list[str]:
  """The pictures of a run from what its workdir holds, as PNG files in `out` (default
  <workdir>/plots); returns their paths. A picture whose input is not there yet is left out.

  - timeline_<split>_<clip>.png: per clip of `split` (`clips`, or the first `num_clips` with
    an event of one modality only), each trained stage's `model` of `seed` (default the
    first) against the truth;
  - refinement.png: training clips with labels that stage 2 dropped for `seed`, against the
    truth where the split has it;
  - per_class.png: per-class segment F on test of each finished stage (mean over the seeds);
  - curves.png: the loss terms and val Type@AV per epoch, every stage and seed.
  """
  out = out or os.path.join(workdir, 'plots')
  figures = _timelines(config, workdir, splits[split], split, clips, num_clips, seed, model)
  refined = wd.load_refined(workdir)
  if refined is not None:
    s, _ = _seed_index(config, len(refined['drop_a']), seed, wd.refine_dir(workdir))
    figures['refinement.png'] = plots.refinement(
        _refinement_examples(splits['train'], refined['drop_a'][s], refined['drop_v'][s]))
  f = {}
  for stage in wd.TRAINING_STAGES:
    report = wd.read_report(wd.stage_paths(workdir, stage)['report'])
    if report is not None:
      f[stage] = {m: np.array([np.nan if v is None else v for v in report[key].values()])
                  for m, key in (('audio', 'per_class_audio'), ('visual', 'per_class_visual'))}
  if f:
    figures['per_class.png'] = plots.per_class(f)
  records = wd.read_metrics(workdir)
  if records:
    figures['curves.png'] = plots.curves(records)
  paths = [os.path.join(out, name) for name in figures]
  for path, fig in zip(paths, figures.values()):
    wd.atomic_write(path, plots.png(fig))
  print(f'plots: {len(paths)} pictures in {out}', flush=True)
  return paths


def _timelines(config, workdir: str, data: Split, split: str, clips, num_clips: int, seed,
               model: str) -> dict:
  """{file name: timeline figure} of the chosen clips, a row per trained stage."""
  trained = [s for s in wd.TRAINING_STAGES if wd.checkpoint_epoch(workdir, s, model)]
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
    chosen = data.take(plots.pick_clips(data.gt_a, data.gt_v, num_clips))
  if not len(chosen):
    return {}
  preds = {}
  for stage in trained:
    params, epoch = wd.restore_params(workdir, stage, model)
    net, params, shown = one_seed(config, params, seed, wd.checkpoint_dir(workdir, stage, model))
    pred, _ = train.segment_outputs(net, params, chosen, config.train.eval_batch_size)
    # best/ holds each seed's own best; its epoch is the last at which any seed improved.
    which = f'epoch {epoch}' if model == 'last' else 'best val'
    preds[f'{plots.STAGE_NAMES[stage]}, {which}, seed {shown}'] = pred
  figures = {}
  for k, name in enumerate(chosen.names):
    file = f'timeline_{split}_{re.sub(r"[^A-Za-z0-9._-]", "_", str(name))}.png'
    if file in figures:  # Two names that differ only in the characters replaced.
      file = file.replace('.png', f'_{k}.png')
    figures[file] = plots.timeline(
        f'{name} ({split})', {label: {m: p[m][k] for m in p} for label, p in preds.items()},
        {'audio': chosen.gt_a[k], 'visual': chosen.gt_v[k]})
  return figures


def _refinement_examples(train_split: Split, drop_a: np.ndarray, drop_v: np.ndarray,
                         per_modality: int = 4) -> dict[str, list[dict]]:
  """{'audio': the first training clips with an audio drop, 'visual': the first others with
  a visual drop}; drop_a, drop_v: bool (N, 25)."""
  picked = {}
  for modality, drop in zip(plots.MODALITIES, (drop_a, drop_v)):
    taken = [i for ids in picked.values() for i in ids]
    picked[modality] = [i for i in np.flatnonzero(drop.any(-1)) if i not in taken][:per_modality]
  return {m: [_refinement_example(train_split, drop_a, drop_v, i) for i in ids]
          for m, ids in picked.items()}


def _refinement_example(train_split: Split, drop_a: np.ndarray, drop_v: np.ndarray,
                        i: int) -> dict:
  """Clip i's weak labels, their drops and, where the split has dense truth, whether each
  event is heard / seen anywhere in the clip (the input of `plots.refinement`)."""
  classes = np.flatnonzero(train_split.labels[i] > 0)
  truth = ({'truth_a': train_split.gt_a[i].any(-1)[classes],
            'truth_v': train_split.gt_v[i].any(-1)[classes]}
           if train_split.has_dense_truth else {'truth_a': None, 'truth_v': None})
  return {'name': str(train_split.names[i]), 'classes': list(classes),
          'drop_a': drop_a[i, classes], 'drop_v': drop_v[i, classes], **truth}
