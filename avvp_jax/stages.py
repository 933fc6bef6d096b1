"""The stages of MA in a workdir (METHOD.md section 4): base -> refine -> final.

Each stage finds its input in the workdir, computes with `train` or `refine`, and leaves its
output there through `workdir`; a finished stage is found and not redone, an interrupted
training stage continues after its last saved epoch.
"""

import time

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from avvp_jax import metrics, refine, train, workdir as wd
from avvp_jax.data import Split, describe
from avvp_jax.models import HAN


def stage_targets(config, workdir: str, stage: str, labels: np.ndarray) -> dict[str, np.ndarray]:
  """The training targets (N, 25) of a stage: the weak labels (base), or the refined ones
  (final) from stage 2's drop masks in the workdir."""
  if stage == 'base':
    return train.targets_from_labels(labels, config.loss)
  refined = wd.load_refined(workdir)
  if refined is None:
    raise FileNotFoundError(f'{wd.refine_dir(workdir)} holds no refined labels: run stage 2 '
                            'before the final stage.')
  return train.targets_from_labels(labels, config.loss, refined['drop_a'], refined['drop_v'],
                                   config.refine.audio_drop_clears_global)


def _mean_terms(terms: dict) -> dict:
  return {k: float(np.mean(v)) for k, v in terms.items()}


def _check_finite(terms: dict, stage: str, epoch: int, last_good: str) -> None:
  bad = ~np.isfinite(terms['total'])
  if bad.any():
    step = int(np.argmax(bad))
    raise FloatingPointError(
        f'Stage {stage!r}, epoch {epoch}, step {step} of the epoch: the loss is '
        f'{terms["total"][step]} ({ {k: float(v[step]) for k, v in terms.items()} }). '
        f'Last good checkpoint: {last_good}.')


def table_title(config, stage: str, split: str, data: str, detail: str) -> str:
  return f'{config.name} [{stage}] {split} on {data}, {detail}'


def train_stage(config: ml_collections.ConfigDict, workdir: str, stage: str,
                splits: dict[str, Split]) -> dict:
  """Trains a fresh model of a stage ('base' or 'final') on its targets, or finds it done.

  Each epoch: train, evaluate val, append to metrics.jsonl, keep the best-val parameters,
  checkpoint. At the end, evaluate test and write the stage's report_test.json (which marks
  it finished). Returns the test results (the ten numbers).
  """
  paths = wd.stage_paths(workdir, stage)
  report = wd.read_report(paths['report'])
  if report is not None:
    print(f'[{stage}] finished earlier ({paths["report"]}), not redone', flush=True)
    return report['results']
  targets = stage_targets(config, workdir, stage, splits['train'].labels)
  tc = config.train
  model = HAN.from_config(config.model)
  mesh = train.make_mesh()
  schedule, tx, train_steps = train.make_training(
      model, ml_collections.FrozenConfigDict(tc), ml_collections.FrozenConfigDict(config.loss),
      len(splits['train']), mesh)
  init_rng, train_rng = jax.random.split(train.stage_rng(config.seed, stage))
  replicated = NamedSharding(mesh, P())
  state = jax.device_put(train.create_train_state(model, tx, init_rng), replicated)
  data = train.device_arrays(splits['train'], targets, mesh)

  with wd.StageCheckpoints(workdir, stage) as ckpt:
    meta = {'epoch': 0, 'best_val': -1.0, 'best_epoch': 0}
    restored = ckpt.restore(state)
    if restored is not None:
      state, meta = restored
      state = jax.device_put(state, replicated)
      print(f'[{stage}] resuming after epoch {meta["epoch"]} from {ckpt.directory}', flush=True)
    wd.truncate_metrics(workdir, stage, meta['epoch'])
    for epoch in range(meta['epoch'] + 1, tc.epochs + 1):
      start = time.perf_counter()
      state, terms = train.train_epoch(
          state, train_steps, data, jax.random.fold_in(train_rng, epoch),
          batch_size=tc.batch_size, steps_per_call=tc.steps_per_call, lr_fn=schedule,
          desc=f'{stage} {epoch}/{tc.epochs}')
      _check_finite(terms, stage, epoch, f'{ckpt.directory} (epoch {meta["epoch"]})'
                    if meta['epoch'] else 'none (the stage had not saved any epoch)')
      val = train.evaluate_split(model, state.params, splits['val'], tc.eval_batch_size)
      record = {'stage': stage, 'epoch': epoch, 'step': int(state.step),
                'lr': float(schedule(int(state.step) - 1)), 'train': _mean_terms(terms),
                'val': val['results'], 'seconds': time.perf_counter() - start}
      print(f'[{stage}] epoch {epoch}/{tc.epochs}  loss {record["train"]["total"]:.4f}  '
            f'val Type@AV {record["val"]["segment/type"]:.1f} / '
            f'{record["val"]["event/type"]:.1f} (segment / event)  {record["seconds"]:.1f}s',
            flush=True)
      wd.append_metrics(workdir, record)
      if record['val']['segment/type'] > meta['best_val']:
        meta.update(best_val=record['val']['segment/type'], best_epoch=epoch)
        ckpt.save_best(epoch, state.params)
      meta['epoch'] = epoch
      ckpt.save(epoch, state, meta)

  data_name = describe(config.data)
  test = train.evaluate_split(model, state.params, splits['test'], tc.eval_batch_size)
  print(metrics.format_table(test['results'], title=table_title(
      config, stage, 'test', data_name, f'epoch {tc.epochs}')))
  wd.write_report(paths['report'], test['results'], split='test', num_clips=len(splits['test']),
                  step=int(state.step), epoch=tc.epochs, config_name=config.name, data=data_name,
                  per_class_audio=test['per_class_audio'],
                  per_class_visual=test['per_class_visual'])
  return test['results']


def refine_stage(config, workdir: str, splits: dict[str, Split]) -> dict:
  """Stage 2: refined targets on the train split from the frozen base model (the last or the
  best-val epoch, `config.train.base_selection`), saved in the workdir; or found there.
  Returns the statistics."""
  done = wd.load_refined(workdir)
  if done is not None:
    print(f'[refine] found in {wd.refine_dir(workdir)}, not redone', flush=True)
    return done['stats']
  params, _ = wd.restore_params(workdir, 'base', config.train.base_selection)
  targets, stats = refine.refine_targets(
      HAN.from_config(config.model), params, splits['train'], config.refine, seed=config.seed,
      eval_batch_size=config.train.eval_batch_size)
  print(refine.format_stats(stats))
  wd.save_refined(workdir, targets, stats)
  return stats
