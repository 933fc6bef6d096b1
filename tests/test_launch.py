"""The entry points beside main.py: parse.py -> evaluate.py --predictions, and the scripts
for Cloud TPU and SLURM (valid shell, only flags main.py defines)."""

import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from avvp_jax import pipeline
from avvp_jax.data import load_splits
from configs import ma

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


def test_parse_then_evaluate_the_events_files_gives_the_stage_report(tmp_path):
  """parse.py -> events_*.csv -> evaluate.py --predictions: exactly the stage's test numbers;
  a folder of .npy triples in the release layout gives the same events for its clips."""
  config = ma.get_config('cr')
  config.update_from_flattened_dict({
      'model.d_model': 32, 'model.ffn_dim': 32, 'data.synthetic.num_train': 32,
      'data.synthetic.num_val': 8, 'data.synthetic.num_test': 24, 'train.epochs': 1,
      'refine.enabled': False, 'train.lr': 3e-3})
  workdir = tmp_path / 'run'
  want = pipeline.run(config, str(workdir))['base']['results']
  printed = _launch('parse.py', f'--workdir={workdir}', '--stage=base', '--split=test')
  folder = workdir / 'base' / 'events_test'
  assert '24 clips of test' in printed and str(folder) in printed
  lines = (folder / 'events_visual.csv').read_text().splitlines()
  assert lines[0] == 'filename\tonset\toffset\tevent_labels' and len(lines) > 1
  _launch('evaluate.py', f'--workdir={workdir}', '--split=test', f'--predictions={folder}')
  got = json.loads((folder / 'report_test.json').read_text())
  assert got['results'] == want and got['model'] == 'predictions'

  # The same clips as files: vggish/ (10, 128), res152/ (80, 2048: 8 frames per segment),
  # r2plus1d_18/ (10, 512), named by the clip.
  test = load_splits(config.data)['test']
  clips = tmp_path / 'clips'
  for sub, field in (('vggish', 'audio'), ('res152', 'video_2d'), ('r2plus1d_18', 'video_3d')):
    (clips / sub).mkdir(parents=True)
    for name, x in zip(test.names[:3], getattr(test, field)[:3]):
      np.save(clips / sub / f'{name}.npy', np.repeat(x, 8, 0) if sub == 'res152' else x)
  _launch('parse.py', f'--workdir={workdir}', '--stage=base', f'--features={clips}',
          f'--out={tmp_path / "parsed"}')
  parsed = json.loads((tmp_path / 'parsed' / 'events.json').read_text())['events']
  split_events = json.loads((folder / 'events.json').read_text())['events']
  for m in ('audio', 'visual'):
    mine = [e for e in split_events[m] if e['filename'] in set(test.names[:3])]
    assert [{**e, 'confidence': pytest.approx(e['confidence'])} for e in mine] == parsed[m]
