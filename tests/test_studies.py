"""The studies' scripts: which runs a table needs, their training time, the regime table and
figure (the runs themselves take an hour and are not run here)."""

import numpy as np

from avvp_jax import logs
from studies import ablation, compare, regime


def test_ablation_runs_each_shared_stage_1_first(monkeypatch):
  monkeypatch.setitem(ablation.TABLES, 'x', ('K = 16 alone', (('K = 16', 'cr_k16', 'final'),)))
  assert ablation.runs_of(['x']) == ['cr', 'cr_k16']  # cr trains the stage 1 it copies.
  runs = ablation.runs_of(['3', 'k'])
  assert runs == ['cr', 'cr_audio', 'cr_visual', 'cr_k4', 'cr_k16']
  assert ablation.runs_of(['4'])[0] == 'cr' and 'r' not in ablation.runs_of(['4'])
  config = ablation.make_config('cr_tau0.3', seed=2, num_seeds=3)
  assert (config.loss.tau, config.seed, config.num_seeds, config.refine.enabled) == (
      0.3, 2, 3, True)
  assert ablation.runs_of(['e']) == ['cr', 'cr_ensemble']
  assert ablation.make_config('cr_ensemble', 0, 3).refine.ensemble


def test_ablation_counts_an_epoch_of_all_seeds_once(tmp_path):
  for stage, epoch, seed, seconds in (('base', 1, 0, 60.0), ('base', 1, 1, 60.0),
                                      ('base', 2, 0, 30.0), ('base', 2, 1, 30.0),
                                      ('final', 1, 0, 30.0), ('final', 1, 1, 30.0)):
    logs.append_metrics(str(tmp_path), [logs.EpochRecord(
        stage=stage, epoch=epoch, seed=seed, step=epoch, lr=1e-3, train={}, val={},
        seconds=seconds, time=0.0)])
  assert ablation.training_minutes(str(tmp_path)) == 2.0


def _regime_numbers():
  keys = regime.STATS + ('base best_val epoch', 'visual/random_precision', 'base segment/visual',
                         'gain segment/visual', 'base segment/type', 'gain segment/type')
  numbers = {}
  for i, size in enumerate((500, 2000)):
    for j, (label, _, _) in enumerate(regime.SCHEDULES):
      for selection in regime.SELECTIONS:
        values = {k: [float(i + j), float(i + j + 1)] for k in keys}
        values['visual/precision'] = [None, None] if j == 3 else [70.0, None]
        numbers[(size, label, selection)] = values
  return numbers


def test_regime_table_has_a_row_per_cell_and_n_a_where_undefined():
  lines = regime.table(_regime_numbers()).splitlines()
  assert len(lines) == 2 + 2 * len(regime.SCHEDULES) * len(regime.SELECTIONS)
  paper = [line for line in lines if '(paper)' in line]
  assert len(paper) == 4 and all('| n/a |' in line for line in paper)
  assert '| 70.0 (1 of 2) |' in lines[2]


def test_regime_figure_is_a_png_of_the_expected_size(tmp_path):
  path = tmp_path / 'regime.png'
  regime.plot(_regime_numbers(), str(path))
  data = path.read_bytes()
  assert data[:8] == b'\x89PNG\r\n\x1a\n'
  width, height = int.from_bytes(data[16:20], 'big'), int.from_bytes(data[20:24], 'big')
  assert (width, height) == (1200, 850)


def test_compare_judges_by_twice_the_standard_error_of_the_difference():
  """The plan's rule: mean_x - mean_y > 2 sqrt((sd_x^2 + sd_y^2) / n)."""
  x, y = np.array([80.0, 81.0, 82.0]), np.array([78.0, 79.0, 80.0])
  # Difference 2.0; sd 0.816 each, so twice the standard error is 1.33.
  assert compare.beats(x, y) and not compare.beats(y, x)
  assert not compare.beats(x, y + 1.0)  # Difference 1.0 < 1.33: not told apart.
