"""The launch scripts for Cloud TPU and SLURM: valid shell, and only flags main.py defines."""

import pathlib
import re
import subprocess

import pytest

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
