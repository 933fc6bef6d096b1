"""The benchmark suite: its PyTorch yardstick computes HAN's function, and the suite runs."""

import json
import math
import os
import pathlib
import re
import subprocess

# As benchmarks/run.py does, before torch loads OpenMP: spinning barriers on a shared CPU
# would slow the quick run down several times.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from jax.extend import core as jax_core

from avvp_jax import losses, train
from avvp_jax.data.split import FEATURES
from avvp_jax.models import HAN, HybridAttentionLayer
from benchmarks import flops, profiling, report, run, sections, torch_han
from configs import ma

B, T = 3, 10
OUTPUTS = ('global_prob', 'a_prob', 'v_prob', 'frame_prob', 'frame_att', 'av_att', 'h_a', 'v')


def _reference_sizes():
  c = ma.get_config().model
  return dict(d_model=c.d_model, num_heads=c.num_heads, ffn_dim=c.ffn_dim, dropout=c.dropout,
              num_classes=c.num_classes, audio_dim=c.audio_dim, video_2d_dim=c.video_2d_dim,
              video_3d_dim=c.video_3d_dim)


def _batch(sizes, seed=0):
  """Random inputs with the 2D features at 80 frames (both models take them) and targets."""
  rng = np.random.default_rng(seed)
  labels = (rng.uniform(size=(B, sizes['num_classes'])) < 0.2).astype(np.float32)
  return {
      'audio': rng.normal(size=(B, T, sizes['audio_dim'])).astype(np.float32),
      'video_2d': np.maximum(rng.normal(size=(B, 8 * T, sizes['video_2d_dim'])), 0).astype(
          np.float32),
      'video_3d': np.maximum(rng.normal(size=(B, T, sizes['video_3d_dim'])), 0).astype(
          np.float32),
      'y_global': labels, 'y_a': labels, 'y_v': 0.9 * labels + 0.05,
  }


def _jax_loss(model, params, batch):
  out = model.apply({'params': params}, batch['audio'], batch['video_2d'], batch['video_3d'],
                    train=False)
  mil, _ = losses.mil_loss(out, batch['y_global'], batch['y_a'], batch['y_v'])
  return mil + losses.contrastive_loss(out['h_a'], out['v']), out


def test_torch_han_computes_the_flax_function():
  """Flax parameters ported into the PyTorch model: same outputs, loss and gradients."""
  sizes = _reference_sizes()
  model = HAN(**sizes)
  batch = _batch(sizes)
  params = sections._init_params(model)  # pylint: disable=protected-access  # As the run's.
  (loss, out), grads = jax.jit(jax.value_and_grad(
      lambda p: _jax_loss(model, p, batch), has_aux=True))(params)

  t_model = torch_han.load_flax_params(torch_han.HAN(**sizes), params).eval()
  t_batch = {k: torch.from_numpy(v) for k, v in batch.items()}
  t_out = t_model(t_batch['audio'], t_batch['video_2d'], t_batch['video_3d'])
  t_loss = torch_han.total_loss(t_out, t_batch)
  t_loss.backward()

  assert set(t_out) == set(OUTPUTS) and set(OUTPUTS) <= set(out)  # (Flax adds VALOR's, JoMoLD's.)
  for k in OUTPUTS:
    np.testing.assert_allclose(t_out[k].detach().numpy(), out[k], rtol=1e-4, atol=1e-5,
                               err_msg=k)
  np.testing.assert_allclose(t_loss.item(), loss, rtol=1e-5)
  expected = torch_han.state_dict_from_flax(grads)
  got = {name: p.grad for name, p in t_model.named_parameters()}
  assert set(got) == set(expected)
  # Absolute tolerance on the scale of the largest gradient: some are 0 up to rounding (a
  # bias before a softmax over T, which cancels it).
  scale = max(float(g.abs().max()) for g in expected.values())
  for name, grad in got.items():
    np.testing.assert_allclose(grad.numpy(), expected[name].numpy(), rtol=1e-3,
                               atol=1e-5 * scale, err_msg=name)


def test_torch_layer_splits_heads_as_flax():
  """Two heads: nn.MultiheadAttention's packed projections hold Flax's per-head slices."""
  layer = HybridAttentionLayer(num_heads=2, ffn_dim=48, dropout=0.1)
  rng = np.random.default_rng(2)
  q = rng.normal(size=(B, T, 32)).astype(np.float32)
  o = rng.normal(size=(B, 7, 32)).astype(np.float32)  # The other modality: T' = 7.
  params = jax.jit(lambda key: layer.init(key, q, o, train=False))(jax.random.key(0))['params']
  expected = jax.jit(lambda p: layer.apply({'params': p}, q, o, train=False))(params)
  t_layer = torch_han.load_flax_params(torch_han.HybridAttentionLayer(32, 2, 48, 0.1),
                                       params).eval()
  got = t_layer(torch.from_numpy(q), torch.from_numpy(o)).detach().numpy()
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_torch_contrastive_smoothing_is_the_spec():
  """0.9 on the matching segment and 0.1 / 9 on each other one, not PyTorch's 0.1 / 10."""
  rng = np.random.default_rng(0)
  h_a, v = (rng.normal(size=(2, T, 8)).astype(np.float32) for _ in range(2))
  expected = losses.contrastive_loss(h_a, v, tau=0.2, label_smoothing=0.1)
  got = torch_han.contrastive_loss(torch.from_numpy(h_a), torch.from_numpy(v), 0.2, 0.1)
  np.testing.assert_allclose(got.item(), expected, rtol=1e-5)


def test_torch_dataset_gives_80_frames_whose_means_are_the_segments():
  rng = np.random.default_rng(0)
  video_2d = rng.normal(size=(4, T, 6)).astype(np.float32)
  dataset = torch_han.ClipDataset(np.zeros((4, T, 2)), video_2d, np.zeros((4, T, 3)),
                                  {'y_a': jnp.ones((4, 25))})
  clip = dataset[2]
  assert clip['video_2d'].shape == (8 * T, 6) and clip['y_a'].shape == (25,)
  np.testing.assert_allclose(clip['video_2d'].reshape(T, 8, 6).mean(1), video_2d[2],
                             rtol=1e-6)


def test_flop_count_is_written_down_per_layer():
  counts = flops.han()
  assert flops.format_counts(counts) in flops.__doc__
  total = flops.total(counts)
  assert (total.forward, total.backward) == (145_326_080, 263_127_040)
  assert flops.per_clip() == 408_453_120
  # fc_v on the 80 frames adds 70 forward-rows of 2048 x 512, weight gradient only.
  assert flops.per_clip(frames_2d=80) - flops.per_clip() == 2 * 2 * 70 * 2048 * 512
  layer = {c.name: c for c in flops.hybrid_layer(sequences=1)}
  assert layer['self_attn projections'].forward == 4 * 2 * 10 * 512 * 512


def _dot_flops(jaxpr) -> list[int]:
  """FLOPs of every dot_general in a jaxpr and the jaxprs nested in it."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      (_, rhs_contract), (_, rhs_batch) = eqn.params['dimension_numbers']
      lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
      rhs_free = [n for i, n in enumerate(rhs) if i not in rhs_contract + rhs_batch]
      found.append(2 * int(np.prod(lhs)) * int(np.prod(rhs_free)))
    for sub in jax_core.jaxprs_in_params(eqn.params):
      found += _dot_flops(sub)
  return found


def test_flop_count_is_the_train_steps_matrix_products():
  # The analytic list of products against the products JAX traces for the gradient of the
  # training loss (MIL + contrastive) at the reference sizes: the same ones, one by one.
  config = ml_collections.FrozenConfigDict(ma.get_config('cr'))
  model = HAN.from_config(config.model)
  batch = {'audio': jnp.zeros((B, T, 128)), 'video_2d': jnp.zeros((B, T, 2048)),
           'video_3d': jnp.zeros((B, T, 512)),
           **{k: jnp.zeros((B, 25)) for k in train.TARGETS}}
  params = jax.eval_shape(lambda: model.init(
      jax.random.key(0), *(batch[k][:1] for k in FEATURES), train=False))['params']
  grad = jax.grad(lambda p: train.loss_fn(p, model, config.loss, batch, jax.random.key(0))[0])
  traced = _dot_flops(jax.make_jaxpr(grad)(params).jaxpr)
  assert sorted(traced) == sorted(p.flops for p in flops.products(clips=B))
  assert sum(traced) == B * flops.per_clip()


def test_refine_flop_ratio_shares_the_own_embedding():
  assert sections.refine_flop_ratio(1) == 1.0
  assert 13.5 < sections.refine_flop_ratio(16) < 16


def test_profile_breakdown_of_a_small_step():
  def loss(w, x, key):
    keep = jax.random.bernoulli(key, 0.9, x.shape)
    return jnp.sum(jnp.tanh(jnp.where(keep, x, 0.0) @ w))

  step = jax.jit(lambda w, x, key: w - 0.1 * jax.grad(loss)(w, x, key))
  w, x = jnp.ones((64, 64)), jnp.ones((256, 64))
  key = jax.random.key(0, impl='rbg')
  call = lambda: jax.block_until_ready(step(w, x, key))
  call()
  shares = profiling.breakdown(call, step.lower(w, x, key).compile().as_text(), calls=2)
  assert set(shares) == set(profiling.CATEGORIES)
  assert sum(shares.values()) == pytest.approx(1.0)
  assert shares['matrix products'] > 0 and shares['random bits'] > 0


def test_hlo_categories_look_inside_conditionals():
  """A conditional (train_steps wraps each step in one) holds its branches' matrix products."""
  f = jax.jit(lambda p, x, w: jax.lax.cond(p, lambda: jnp.tanh(x @ w), lambda: x))
  hlo = f.lower(True, jnp.ones((8, 8)), jnp.ones((8, 8))).compile().as_text()
  categories = profiling.hlo_categories(hlo)
  conditionals = re.findall(r'%([\w.\-]+) = [^=]*? conditional\(', hlo)
  assert conditionals and all(categories[n] == 'matrix products' for n in conditionals)


STEP_FIGURES = {'jax_matmul_fraction': 0.31, 'torch_matmul_fraction': 0.28, 'flop_ratio': 1.72,
                'products_only_speedup': 3.4}


def _report(backend, speedup):
  target = report.target('step_vs_torch', speedup, speedup >= 2, f'{speedup:.2f}x',
                         STEP_FIGURES)
  return {'date': '2026-01-01', 'profile': 'cpu', 'seconds': 1.0,
          'machine': {'backend': backend, 'device': backend, 'devices': 1, 'cpu': 'x',
                      'cores': 2, 'jax': '0', 'torch': '0', 'torch_device': 'cpu',
                      'load_average': [0.0]},
          'flops': {'per_clip_gflop': 0.408, 'per_clip_frames_gflop': 0.702},
          'rows': [report.result_row('train', 'train step', jax_s=0.1, torch_s=0.1 * speedup,
                              speedup=speedup, clips=16, note='a note'),
                   report.result_row('eval', 'metrics', jax_s=2.5)],
          'targets': [target]}


def _status(table, target_name):
  """The status cell of a target's line in a rendered table."""
  line, = (line for line in table.splitlines() if line.startswith(f'| {target_name} |'))
  return line.split(' | ')[-1].rstrip(' |')


def test_missed_target_shows_its_numbers():
  name = report.TARGETS['step_vs_torch'][0]
  status = _status(report.format_report(_report('cpu', 1.5)), name)
  assert status.startswith('MISSED')
  for key, value in STEP_FIGURES.items():
    assert f'{key} = {value}' in status
  assert _status(report.format_report(_report('cpu', 2.5)), name) == 'met'
  assert _status(report.format_report(_report('gpu', 1.5)), name) == 'not judged on gpu'


def test_format_report_renders_a_line_per_row():
  lines = report.format_report(_report('cpu', 1.5)).splitlines()
  step, = (line for line in lines if line.startswith('| train step |'))
  cells = [c.strip() for c in step.strip('|').split('|')]
  assert cells == ['train step', '100.00 ms', '150.00 ms', '1.50x', '160', '', '', 'a note']
  assert any(line.startswith('| metrics | 2.50 s |') for line in lines)


def test_epoch_figures_split_the_epoch_ratio():
  n = sections.EPOCH_STEPS
  step = report.result_row('train', 'step', jax_s=0.05, torch_s=0.12)
  products = report.result_row('train', 'products', jax_s=0.04)
  epoch = report.result_row('train', 'epoch', jax_s=0.06 * n, torch_s=0.132 * n)
  figures = sections.epoch_figures(step, products, epoch)
  assert figures == pytest.approx({'train_step_speedup': 2.4, 'jax_epoch_step_over_step': 1.2,
                                   'torch_epoch_step_over_step': 1.1,
                                   'products_only_speedup': 3.3})
  parts = (figures['train_step_speedup'] * figures['torch_epoch_step_over_step']
           / figures['jax_epoch_step_over_step'])
  assert parts == pytest.approx(epoch['torch_s'] / epoch['jax_s'])


def test_results_file_keeps_the_rest_and_other_backends(tmp_path):
  path = tmp_path / 'RESULTS.md'
  path.write_text(f'# Results\n\n## Ablations\n\n| a | b |\n\n{report.MARKERS[0]}\nold text\n'
                  f'{report.MARKERS[1]}\n\nafter\n')
  report.write_results(str(path), _report('gpu', 3.0))
  report.write_results(str(path), _report('cpu', 1.0))
  report.write_results(str(path), _report('cpu', 2.5))
  text = path.read_text()
  assert text.startswith('# Results\n\n## Ablations\n\n| a | b |\n\n')
  assert text.endswith(f'{report.MARKERS[1]}\n\nafter\n')
  assert 'old text' not in text
  assert text.count('### Performance on cpu') == 1 and '### Performance on gpu' in text
  assert '2.50x' in text and '1.00x' not in text

  fresh = tmp_path / 'new.md'
  report.write_results(str(fresh), _report('cpu', 2.5))
  assert fresh.read_text().startswith(f'# Results\n\n## Performance\n\n{report.MARKERS[0]}\n')


def test_benchmarks_import_nothing_from_tests():
  """The suite and the studies run without the tests' code (and pytest) on the path."""
  root = pathlib.Path(__file__).resolve().parent.parent
  for path in [*(root / 'benchmarks').glob('*.py'), *(root / 'studies').glob('*.py')]:
    assert not re.search(r'^\s*(from|import) tests\b', path.read_text(), re.M), path.name


def test_quick_suite_runs_every_section(tmp_path):
  json_path, results_path = tmp_path / 'results.json', tmp_path / 'RESULTS.md'
  out = run.main(['--quick', '--json', str(json_path), '--results', str(results_path)])
  assert {r['section'] for r in out['rows']} == set(run.SECTIONS)
  assert [t['key'] for t in out['targets']] == [
      'step_vs_torch', 'step_vs_peak', 'epoch_vs_torch', 'refine_k16', 'seeds_8',
      'metrics_time', 'eval_overhead', 'phases_overhead', 'pipeline_vs_torch', 'memory_peak']
  for r in out['rows']:
    assert r['jax_s'] is None or r['jax_s'] > 0, r['benchmark']
  for t in out['targets']:
    assert t['figures'] and all(math.isfinite(v) and v > 0 for v in t['figures'].values()), t
  assert json.loads(json_path.read_text()) == json.loads(json.dumps(out))
  text = results_path.read_text()
  assert report.MARKERS[0] in text and 'train step, batch 16' in text


def test_gpu_script_runs_every_section_and_the_profiles_override_existing_flags():
  script = pathlib.Path(__file__).resolve().parents[1] / 'benchmarks' / 'gpu.sh'
  subprocess.run(['bash', '-n', str(script)], check=True)
  named = [x for group in re.findall(r'--sections ([\w,]+)', script.read_text())
           for x in group.split(',')]
  assert sorted(named) == sorted(run.SECTIONS)
  config = ma.get_config()
  for sizes in sections.PROFILES.values():
    for override in (*sizes.phases_overrides, *sizes.e2e_overrides, *sizes.memory_overrides):
      node = config
      for part in re.fullmatch(r'--config\.([\w.]+)=.*', override).group(1).split('.'):
        node = node[part]  # A KeyError names an override the config lacks.


def test_torch_pipeline_times_the_three_stages_and_refines_as_the_library():
  """benchmarks/torch_pipeline.py: every phase timed, inside the wall; its stage 2 swaps the
  tracks as refine.swapped_probs does (same parameters, same partners) and its stage-3
  targets are the rule's on its probabilities."""
  from avvp_jax import data, refine  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_pipeline  # pylint: disable=g-import-not-at-top
  config = ma.get_config()
  config.data.synthetic.update(num_train=48, num_val=16, num_test=16)
  config.train.epochs = 1
  config.model.update(d_model=32, ffn_dim=32)
  splits = data.load_splits(config.data)
  labels = splits['train'].labels
  record = {}
  seconds = torch_pipeline.run_pipeline(splits, config, record=record)
  for phase in torch_pipeline.PHASES:
    assert seconds[phase] > 0, phase
  assert sum(seconds[p] for p in torch_pipeline.PHASES) <= seconds['wall']
  assert 0 <= seconds['final_test_type'] <= 100
  refined = record['refinement']
  drop_a, drop_v = refine.refine_labels(
      {k: refined[k] for k in ('a_prob', 'v_prob')},
      {k: refined[k] for k in torch_pipeline.SWAPPED}, labels)
  expected = train.targets_from_labels(labels, config.loss, drop_a, drop_v)
  for k in train.TARGETS:
    np.testing.assert_array_equal(record['targets'][k], expected[k], err_msg=k)
  partners = refined['partners']
  assert not (labels.astype(bool) & labels[partners].astype(bool)).any()

  # Stage 2 alone, on a model both frameworks share: the same probabilities on the same
  # pairings (a swap the wrong way round gives another clip's), and so the same drops. The
  # rule's bar is raised so that labels drop at a random initialisation.
  config.refine.threshold = 1.0
  model = HAN.from_config(config.model)
  params = jax.jit(lambda key: train.init_params(model, key))(
      jax.random.key(0, impl=train.RNG_IMPL))
  t_model = torch_han.load_flax_params(torch_pipeline.make_model(config.model), params)
  torch.manual_seed(1)
  got = torch_pipeline.refine_clips(t_model, splits['train'], config.refine, 16,
                                    torch.device('cpu'))
  orig = train.predict(model, params, splits['train'], 16)
  swapped = refine.swapped_probs(model, params, splits['train'], got['partners'][:, None], 16)
  for k in ('a_prob', 'v_prob'):
    np.testing.assert_allclose(got[k], orig[k], rtol=1e-4, atol=1e-6, err_msg=k)
  for k in torch_pipeline.SWAPPED:
    np.testing.assert_allclose(got[k], swapped[k], rtol=1e-4, atol=1e-6, err_msg=k)
  drop_a, drop_v = refine.refine_labels(orig, swapped, labels, config.refine.threshold)
  assert 0 < drop_a.sum() < labels.sum() and 0 < drop_v.sum() < labels.sum()
  np.testing.assert_array_equal(got['drop_a'], drop_a)
  np.testing.assert_array_equal(got['drop_v'], drop_v)
