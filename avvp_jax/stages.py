"""The stages of MA in a workdir (docs/spec.md section 4): base -> refine -> final.

Each stage finds its input in the workdir, computes with `train` or `refine`, and leaves its
output there (`checkpoints`, `logs`, `reports`); a finished stage is found and not redone,
an interrupted training stage continues after its last saved epoch. Every stage trains or
refines the models of all the run's seeds at once.
"""

import hashlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from avvp_jax import checkpoints, denoise, logs, metrics, placement, refine, reports, train
from avvp_jax import workdir as wd
from avvp_jax.data import Split, describe, pseudo_labels
from avvp_jax.models import HAN
from avvp_jax.seeds import seed_list


def check_placement(config) -> str:
  """Refuses, before any work, a seed count that the device mesh cannot place; else says
  where the seeds go."""
  return placement.describe(seed_list(config))


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


def stage_loss(config, stage: str) -> ml_collections.FrozenConfigDict:
  """`config.loss` as a training stage uses it: JoMoLD's stage 1 (its noise estimator) sums
  its four terms with weight 1 and does not denoise; its stage 3 weighs them as the config
  says and denoises every batch."""
  loss = ml_collections.ConfigDict(config.loss.to_dict())
  if loss.kind == 'jomold':
    loss.denoise = stage == 'final' and config.denoise.enabled
    if stage == 'base':
      loss.update(audio_weight=1.0, visual_weight=1.0, video_weight=1.0, nce_weight=1.0)
  return ml_collections.FrozenConfigDict(loss)


def stage_targets(config, workdir: str, stage: str, split: Split,
                  num_seeds: int) -> dict[str, np.ndarray]:
  """The training targets of a stage, one set per seed, (S, N, 25) each: the weak labels
  (base), or each seed's refined ones (final) from stage 2's drop masks in the workdir.
  With VALOR's loss (`config.loss.kind` 'pseudo_labels'), also the segment pseudo labels
  pl_a, pl_v (S, N, 10, 25), those of a dropped (clip, class, modality) set to 0. JoMoLD's
  final stage keeps the weak labels and adds stage 2's noise ratios noise_a, noise_v (S, 25),
  by which each batch is denoised."""
  labels = split.labels
  kind = config.loss.get('kind', 'mil')
  pseudo = pseudo_labels.for_split(config.data, split) if kind == 'pseudo_labels' else None
  if pseudo is not None and stage == 'base':
    print(pseudo_labels.format_quality(pseudo_labels.quality(pseudo, split)), flush=True)
  if stage == 'base' or kind == 'jomold':
    drops = [(None, None)] * num_seeds
  if stage == 'final':
    refined = checkpoints.load_refined(workdir)
    if refined is None:
      raise FileNotFoundError(f'{wd.refine_dir(workdir)} holds no refined labels: run stage '
                              '2 before the final stage.')
    first = refined['noise_a' if kind == 'jomold' else 'drop_a']
    if len(first) != num_seeds:
      raise ValueError(f'{wd.refine_dir(workdir)} holds the stage-2 output of '
                       f'{len(first)} seeds, not {num_seeds}.')
    if kind != 'jomold':
      drops = list(zip(refined['drop_a'], refined['drop_v']))
  per_seed = []
  for s, (drop_a, drop_v) in enumerate(drops):
    targets = train.targets_from_labels(labels, config.loss, drop_a, drop_v,
                                        config.refine.audio_drop_clears_global)
    if pseudo is not None:
      for key, m, drop in (('pl_a', 'audio', drop_a), ('pl_v', 'visual', drop_v)):
        keep = 1.0 if drop is None else ~drop[:, None, :]
        targets[key] = (pseudo[m] * keep).astype(np.float32)
    if kind == 'jomold' and stage == 'final':
      targets.update(noise_a=refined['noise_a'][s], noise_v=refined['noise_v'][s])
    per_seed.append(targets)
  return {k: np.stack([t[k] for t in per_seed]) for k in per_seed[0]}


def _mean_terms(terms: dict, seed: int) -> dict:
  """An epoch's loss terms of one seed, means over its steps; JoMoLD's drop counts are sums
  over the epoch, with their precision and recall (%) where the split has truth."""
  out = {k: float(np.sum(v[seed]) if k.startswith('drops/') else np.mean(v[seed]))
         for k, v in terms.items()}
  for m in ('audio', 'visual'):  # (Left out where undefined: no drop, nothing absent.)
    right = out.get(f'drops/{m}_right')
    if right is not None and out[f'drops/{m}']:
      out[f'drops/{m}_precision'] = 100 * right / out[f'drops/{m}']
    if right is not None and out[f'drops/{m}_absent']:
      out[f'drops/{m}_recall'] = 100 * right / out[f'drops/{m}_absent']
  return out


def format_drops(record) -> str:
  """JoMoLD's drops of one epoch record: 'epoch 3: audio 120 dropped (precision 71.0 %,
  recall 40.2 %); visual ...'."""
  def one(m):
    t = record.train
    text = f'{m} {t[f"drops/{m}"]:.0f} dropped'
    if f'drops/{m}_absent' in t:
      fmt = lambda v: 'n/a' if v is None else f'{v:.1f} %'
      text += (f' (precision {fmt(t.get(f"drops/{m}_precision"))}, recall '
               f'{fmt(t.get(f"drops/{m}_recall"))} of {t[f"drops/{m}_absent"]:.0f} labels '
               f'truly absent)')
    return text
  return f'epoch {record.epoch}: {one("audio")}; {one("visual")}'



def _check_finite(terms: dict, stage: str, epoch: int, seeds: list[int], last_good: str) -> None:
  """terms: {name: (S, steps)}; the first step of the first seed with a non-finite loss."""
  bad = ~np.isfinite(terms['total'])
  if bad.any():
    s, step = np.argwhere(bad)[0]
    raise FloatingPointError(
        f'Stage {stage!r}, seed {seeds[s]}, epoch {epoch}, step {step} of the epoch: the loss '
        f'is {terms["total"][s, step]} ({ {k: float(v[s, step]) for k, v in terms.items()} }). '
        f'Last good checkpoint: {last_good}.')


def train_stage(config: ml_collections.ConfigDict, workdir: str, stage: str,
                splits: dict[str, Split]) -> dict:
  """Trains fresh models of a stage ('base' or 'final'), one per seed of `seed_list`, in one
  vmapped program, on their targets; or finds them done.

  Each epoch: train, evaluate val, append to metrics.jsonl (a record per seed) and the
  TensorBoard files, keep each seed's best-val parameters, checkpoint. At the end, evaluate
  test and write the stage's report_test.json (which marks it finished). Returns that report
  (`reports.read_report`).
  """
  paths = wd.stage_paths(workdir, stage)
  report = reports.read_report(paths['report'])
  if report is not None:
    print(f'[{stage}] finished earlier ({paths["report"]}), not redone', flush=True)
    return report
  seeds = seed_list(config)
  targets = stage_targets(config, workdir, stage, splits['train'], len(seeds))
  tc, protocol, loss = config.train, train.eval_protocol(config), stage_loss(config, stage)
  model = HAN.from_config(config.model, stage)
  mesh = placement.make_mesh(len(seeds))
  data = train.device_arrays(splits['train'], targets, mesh, seeds=True, truth=bool(
      loss.get('denoise', False) and splits['train'].gt_a is not None))
  schedule, tx, train_steps = train.make_training(
      model, ml_collections.FrozenConfigDict(tc), loss, len(splits['train']), mesh,
      seeds=True, data_keys=tuple(data))
  init_rngs, train_rngs = zip(*(jax.random.split(
      train.stage_rng(seed, wd.TRAINING_STAGES.index(stage))) for seed in seeds))
  state = jax.device_put(train.create_train_states(model, tx, jnp.stack(init_rngs)),
                         placement.stacked(mesh))

  with checkpoints.StageCheckpoints(workdir, stage) as ckpt:
    meta = {'epoch': 0, 'best_val': [-1.0] * len(seeds), 'best_epoch': [0] * len(seeds),
            'seeds': seeds}
    best = None  # Each seed's best-val parameters so far, (S, ...).
    restored = ckpt.restore(state)
    if restored is not None:
      state, meta = restored
      meta = {**meta, 'seeds': seeds}  # (A checkpoint written before metas named them.)
      best = ckpt.restore_best(state.params)
      print(f'[{stage}] resuming after epoch {meta["epoch"]} from {ckpt.directory}', flush=True)
    logs.truncate_metrics(workdir, stage, meta['epoch'])
    with logs.TensorBoardLog(workdir) as tensorboard:
      for epoch in range(meta['epoch'] + 1, tc.epochs + 1):
        start = time.perf_counter()
        epoch_rngs = jnp.stack([jax.random.fold_in(k, epoch) for k in train_rngs])
        state, terms = train.train_epoch(
            state, train_steps, data, epoch_rngs, batch_size=tc.batch_size,
            steps_per_call=tc.steps_per_call, lr_fn=schedule, desc=f'{stage} {epoch}/{tc.epochs}')
        _check_finite(terms, stage, epoch, seeds, f'{ckpt.directory} (epoch {meta["epoch"]})'
                      if meta['epoch'] else 'none (the stage had not saved any epoch)')
        vals = train.evaluate_split(model, state.params, splits['val'], tc.eval_batch_size,
                                    seeds=True, clip_filter=protocol.clip_filter)
        seconds = time.perf_counter() - start
        step = int(placement.host(state.step)[0])
        records = [logs.EpochRecord(
            stage=stage, epoch=epoch, seed=seed, step=step, lr=float(schedule(step - 1)),
            train=_mean_terms(terms, s), val=val['results'], seconds=seconds, time=time.time())
                   for s, (seed, val) in enumerate(zip(seeds, vals))]
        print(logs.format_epoch(records, tc.epochs), flush=True)
        logs.append_metrics(workdir, records)
        tensorboard.add(records)
        improved = np.array([_better(r.val[protocol.val_metric], b, protocol.val_ties)
                             for r, b in zip(records, meta['best_val'])])
        if improved.any():
          best = state.params if best is None else jax.tree.map(
              lambda p, b: jnp.where(improved.reshape((-1,) + (1,) * (p.ndim - 1)), p, b),
              state.params, best)
          best = jax.tree.map(jnp.copy, best)  # `state` is donated to the next epoch's steps.
          for s in np.flatnonzero(improved):
            meta['best_val'][s] = records[s].val[protocol.val_metric]
            meta['best_epoch'][s] = epoch
          ckpt.save_best(epoch, best, seeds)
        meta['epoch'] = epoch
        ckpt.save(epoch, state, meta)

  if loss.get('denoise', False):
    for record in logs.read_metrics(workdir):
      if record.stage != stage or record.epoch != tc.epochs:
        continue
      print(f'[{stage}] denoising, seed {record.seed}, ' + format_drops(record), flush=True)
  if protocol.model == 'best_val':
    tested, epoch = best, list(meta['best_epoch'])
    detail = (f'best val {protocol.val_metric} ({protocol.val_ties} of ties), epoch '
              f'{epoch[0] if len(epoch) == 1 else epoch}')
  else:
    tested, epoch, detail = state.params, tc.epochs, f'epoch {tc.epochs}'
  tests = train.evaluate_split(model, tested, splits['test'], tc.eval_batch_size, seeds=True,
                               clip_filter=protocol.clip_filter)
  data_name = describe(config.data)
  summary = metrics.summarise_seeds(tests)
  print(metrics.format_results(metrics.table_title(
      config.name, stage, 'test', data_name, detail), seeds, summary, tests))
  return reports.write_report(
      paths['report'], summary, seeds=seeds, per_seed=tests, split='test',
      num_clips=len(splits['test']), step=int(placement.host(state.step)[0]),
      model=protocol.model, epoch=epoch, config_name=config.name, data=data_name)


def _better(value: float, best: float, ties: str) -> bool:
  """Whether a validation number replaces the best so far: strictly greater ('first' of
  ties kept: MA's checkpoints, VALOR), or at least as great ('last': JoMoLD's `>=`)."""
  return value >= best if ties == 'last' else value > best


def noise_ratio_stage(config, workdir: str, splits: dict[str, Split]) -> dict:
  """JoMoLD's stage 2: each seed's noise ratios (25,) per modality from its frozen noise
  estimator (stage 1's model, `config.train.base_selection`) on the train split, saved in the
  workdir; or found there. Returns the statistics: the mean ratio per modality and, where
  the split has truth, the share of labels truly absent from that modality."""
  done = checkpoints.load_refined(workdir)
  if done is not None:
    print(f'[noise ratios] found in {wd.refine_dir(workdir)}, not redone', flush=True)
    return done['stats']
  base = checkpoints.restore_params(workdir, 'base', config.train.base_selection)
  seeds, split, dc = seed_list(config), splits['train'], config.denoise
  out = train.predict(HAN.from_config(config.model, 'base'), base.params, split,
                      config.train.eval_batch_size, seeds=True)
  y = train.targets_from_labels(split.labels, config.loss, audio_drop_clears_global=False)
  ratios = [denoise.noise_ratios(out['a_prob'][s], out['v_prob'][s], y['y_a'], y['y_v'],
                                 split.labels, a_thres=dc.a_thres, v_thres=dc.v_thres)
            for s in range(len(seeds))]
  labelled = split.labels > 0
  per_seed = []
  for seed, r in zip(seeds, ratios):
    stats = {f'{m}/mean_ratio': float(r[m].mean()) for m in ('audio', 'visual')}
    if split.gt_a is not None:
      for m, gt in (('audio', split.gt_a), ('visual', split.gt_v)):
        stats[f'{m}/truly_absent'] = float((labelled & ~gt.any(-1)).sum() / labelled.sum())
    per_seed.append(stats)
    print((f'seed {seed}: ' if len(seeds) > 1 else '') + 'noise ratios, mean over classes: ' +
          '; '.join(f'{m} {stats[f"{m}/mean_ratio"]:.3f}' + (
              f' (labels truly absent from the {m}: {stats[f"{m}/truly_absent"]:.3f})'
              if f'{m}/truly_absent' in stats else '') for m in ('audio', 'visual')),
          flush=True)
  targets = {f'noise_{m[0]}': np.stack([r[m] for r in ratios]) for m in ('audio', 'visual')}
  stats = {k: float(np.mean([p[k] for p in per_seed])) for k in per_seed[0]}
  checkpoints.save_refined(workdir, targets, {**stats, 'seeds': seeds, 'per_seed': per_seed})
  return stats


def refine_stage(config, workdir: str, splits: dict[str, Split]) -> dict:
  """Stage 2: refined targets on the train split, one set per seed, from the frozen base
  models (the last or the best-val epoch, `config.train.base_selection`), saved in the
  workdir; or found there. Returns the statistics."""
  done = checkpoints.load_refined(workdir)
  if done is not None:
    print(f'[refine] found in {wd.refine_dir(workdir)}, not redone', flush=True)
    return done['stats']
  base = checkpoints.restore_params(workdir, 'base', config.train.base_selection)
  seeds = seed_list(config)
  targets, stats = refine.refine_targets(
      HAN.from_config(config.model, 'base'), base.params, splits['train'], config.refine,
      seeds=seeds, eval_batch_size=config.train.eval_batch_size)
  for seed, seed_stats in zip(seeds, stats['per_seed']):
    print((f'seed {seed}: ' if len(seeds) > 1 else '') + refine.format_stats(seed_stats))
  if len(seeds) > 1:
    print(refine.format_seed_stats(stats['per_seed']))
  checkpoints.save_refined(workdir, targets, stats)
  return stats
