"""The entry points beside main.py: parse.py -> evaluate.py --predictions, plots.py, and the
scripts for Cloud TPU and SLURM (valid shell, only flags main.py defines)."""

import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from avvp_jax import checkpoints, pipeline, plots
from avvp_jax.data import annotations, load_splits
from configs import jomold, ma

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ('tpu_vm.sh', 'slurm.sbatch')


@pytest.mark.parametrize('name', SCRIPTS)
def test_launch_script_is_valid_shell_calling_main_with_its_flags(name):
  script = ROOT / 'launch' / name
  subprocess.run(['bash', '-n', str(script)], check=True)
  main = (ROOT / 'launch' / 'main.py').read_text()
  defined = set(re.findall(r"DEFINE_\w+\(\s*'(\w+)'", main))
  call = next(line for line in script.read_text().splitlines() if 'launch/main.py --' in line)
  used = set(re.findall(r'--(\w+)', call.split('launch/main.py', 1)[1]))
  assert used and used <= defined, used - defined


def _launch(script, *flags):
  return subprocess.run([sys.executable, str(ROOT / 'launch' / script), *flags], cwd=ROOT,
                        check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope='module')
def base_run(tmp_path_factory):
  """(config, workdir, test report) of a one-epoch run without refinement."""
  config = ma.get_config('cr')
  config.update_from_flattened_dict({
      'model.d_model': 32, 'model.ffn_dim': 32, 'data.synthetic.num_train': 32,
      'data.synthetic.num_val': 8, 'data.synthetic.num_test': 24, 'train.epochs': 1,
      'refine.enabled': False, 'train.lr': 3e-3})
  workdir = tmp_path_factory.mktemp('base_run') / 'run'
  return config, workdir, pipeline.run(config, str(workdir))['base']


def test_parse_then_evaluate_the_events_files_gives_the_stage_report(tmp_path, base_run):
  """parse.py -> events_*.csv -> evaluate.py --predictions: exactly the stage's test numbers,
  also from a checkpoint folder; a folder of .npy triples in the release layout gives the
  same events for its clips."""
  config, workdir, report = base_run
  want = report['results']
  printed = _launch('parse.py', f'--workdir={workdir}', '--stage=base', '--split=test')
  folder = workdir / 'base' / 'events_test'
  assert '24 clips of test' in printed and str(folder) in printed
  lines = (folder / 'events_visual.csv').read_text().splitlines()
  assert lines[0] == 'filename\tonset\toffset\tevent_labels' and len(lines) > 1
  _launch('evaluate.py', f'--workdir={workdir}', '--split=test', f'--predictions={folder}')
  got = json.loads((folder / 'report_test.json').read_text())
  assert got['results'] == want and got['model'] == 'predictions'

  # A checkpoint folder, its model from the workdir above it: the same events.
  _launch('parse.py', f'--checkpoint={workdir / "base" / "checkpoints"}', '--split=test',
          f'--out={tmp_path / "from_checkpoint"}')
  for m in ('audio', 'visual'):
    assert ((tmp_path / 'from_checkpoint' / f'events_{m}.csv').read_text()
            == (folder / f'events_{m}.csv').read_text())

  # The same clips as files: vggish/ (10, 128), res152/ (80, 2048: 8 frames per segment),
  # r2plus1d_18/ (10, 512), named as the release names them: by the 11-character video id.
  test = load_splits(config.data)['test']
  clips = tmp_path / 'clips'
  for sub, field in (('vggish', 'audio'), ('res152', 'video_2d'), ('r2plus1d_18', 'video_3d')):
    (clips / sub).mkdir(parents=True)
    for name, x in zip(test.names[:3], getattr(test, field)[:3]):
      np.save(clips / sub / f'{annotations.video_id(name)}.npy',
              np.repeat(x, 8, 0) if sub == 'res152' else x)
  _launch('parse.py', f'--workdir={workdir}', '--stage=base', f'--features={clips}',
          f'--out={tmp_path / "parsed"}')
  parsed = json.loads((tmp_path / 'parsed' / 'events.json').read_text())['events']
  split_events = json.loads((folder / 'events.json').read_text())['events']
  for m in ('audio', 'visual'):
    mine = [{**e, 'filename': annotations.video_id(e['filename'])} for e in split_events[m]
            if e['filename'] in set(test.names[:3])]
    assert [{**e, 'confidence': pytest.approx(e['confidence'])} for e in mine] == parsed[m]
  # Their events, rows named by id, score against the split as the clips they are: as the
  # split's own rows of those clips, named by filename, do.
  named = tmp_path / 'named'
  named.mkdir()
  for m in ('audio', 'visual'):
    rows = (folder / f'events_{m}.csv').read_text().splitlines()
    (named / f'events_{m}.csv').write_text('\n'.join(
        [rows[0]] + [r for r in rows[1:] if r.split('\t')[0] in set(test.names[:3])]) + '\n')
  assert sum(len((named / f'events_{m}.csv').read_text().splitlines()) for m in
             ('audio', 'visual')) > 2, 'the three clips have no event: inconclusive'
  for parsed_folder in (tmp_path / 'parsed', named):
    _launch('evaluate.py', f'--workdir={workdir}', '--split=test',
            f'--predictions={parsed_folder}')
  by_id, by_name = (json.loads((f / 'report_test.json').read_text())['results']
                    for f in (tmp_path / 'parsed', named))
  assert by_id == by_name


def test_a_checkpoint_moved_out_of_its_workdir_is_the_model_of_the_stage_given(tmp_path):
  """JoMoLD's stage 1 has no cross-modal attention: a copy of its best/ folder outside the
  workdir is refused without --stage, naming the stage; with --stage=base it gives the
  events of the workdir's own stage 1."""
  overrides = {'model.d_model': 32, 'model.ffn_dim': 32, 'data.synthetic.num_train': 32,
               'data.synthetic.num_val': 8, 'data.synthetic.num_test': 24, 'train.epochs': 1,
               'refine.enabled': False}
  config = jomold.get_config()
  config.update_from_flattened_dict(overrides)
  workdir = tmp_path / 'run'
  pipeline.run(config, str(workdir))
  moved = tmp_path / 'moved'
  shutil.copytree(workdir / 'base' / 'best', moved)
  flags = ['--config=configs/jomold.py',
           *(f'--config.{k}={v}' for k, v in overrides.items()), f'--checkpoint={moved}',
           '--split=test', f'--out={tmp_path / "events"}']
  refused = subprocess.run([sys.executable, str(ROOT / 'launch' / 'parse.py'), *flags], cwd=ROOT,
                           capture_output=True, text=True)
  assert refused.returncode == 1 and 'the training stage' in refused.stderr, refused.stderr
  _launch('parse.py', *flags, '--stage=base')
  _launch('parse.py', f'--workdir={workdir}', '--stage=base', '--split=test')
  for m in ('audio', 'visual'):
    assert ((tmp_path / 'events' / f'events_{m}.csv').read_text()
            == (workdir / 'base' / 'events_test' / f'events_{m}.csv').read_text())


def test_plots_entry_draws_the_chosen_clips_and_what_the_workdir_holds(tmp_path, base_run,
                                                                      monkeypatch):
  """The main command's pictures of a run without refinement: no refinement.png, one row
  per timeline; plots.py redraws them for chosen clips; a clip that is not there is named."""
  config, workdir, _ = base_run
  drawn = sorted(os.listdir(workdir / 'plots'))
  assert drawn[:2] == ['curves.png', 'per_class.png'] and len(drawn) == 5
  assert all(name.startswith('timeline_test_') for name in drawn[2:])
  name = str(load_splits(config.data)['test'].names[5])
  printed = _launch('plots.py', f'--workdir={workdir}', f'--clips={name}',
                    f'--out={tmp_path / "pictures"}')
  assert f'timeline_test_{name}.png' in printed
  png = (tmp_path / 'pictures' / f'timeline_test_{name}.png').read_bytes()
  width, height = struct.unpack('>II', png[16:24])
  assert width == 1000 and height < 150 + 650  # One row (stage 1 only), the classes it has.
  splits = load_splits(config.data)
  with pytest.raises(ValueError, match=r"Clips \['nope'\] are not in the test split"):
    plots.plot_run(config, str(workdir), splits, clips=['nope'], out=str(tmp_path / 'bad'))
  # No clip chosen (e.g. none with an event of one modality): the other pictures still come.
  paths = plots.plot_run(config, str(workdir), splits, num_clips=0,
                            out=str(tmp_path / 'none'))
  assert sorted(os.path.basename(p) for p in paths) == ['curves.png', 'per_class.png']
  # The timelines show the model that the method tests (and per_class.png scores), unless told.
  shown, restore = [], checkpoints.restore_params
  monkeypatch.setattr(checkpoints, 'restore_params',
                      lambda w, stage, which: shown.append(which) or restore(w, stage, which))
  best = config.copy_and_resolve_references()
  best.eval.model = 'best_val'
  for c, model in ((best, None), (config, None), (best, 'last')):
    plots.plot_run(c, str(workdir), splits, num_clips=1, model=model, out=str(tmp_path / 'm'))
  assert shown == ['best_val', 'last', 'last']
