"""Where arrays live: a split's features sharded along the mesh's `data` axis, on 4 simulated
devices, without a device ever holding the whole split."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import jax

from avvp_jax import placement
from avvp_jax.data import synthetic

ROOT = pathlib.Path(__file__).resolve().parents[1]

# On 4 simulated devices, one seed (mesh seed 1 x data 4): the features' shards; the leading
# size of every array that the compiled train step and an evaluation batch's gather
# all-gather; and the bytes of their temporaries, against those of the whole split's 2D features.
FOUR_DEVICES = r'''
import json, re, sys
import jax, ml_collections, numpy as np
from avvp_jax import placement, train
from avvp_jax.data import synthetic
from configs import ma

config = ma.get_config('c')
config.model.update(d_model=32, ffn_dim=32)
split = synthetic.generate_split(802, 0, 'train')  # 802 = 4 x 200 + 2: padded to 804.
mesh = placement.make_mesh(1)
model = train.HAN.from_config(config.model)
targets = train.targets_from_labels(split.labels, config.loss)
data = train.device_arrays(split, targets, mesh)
v2d = data['video_2d']
_, tx, train_steps = train.make_training(
    model, ml_collections.FrozenConfigDict(config.train),
    ml_collections.FrozenConfigDict(config.loss), len(split), mesh)
state = train.create_train_state(model, tx, jax.random.key(0, impl=train.RNG_IMPL))
idx = train.epoch_batches(jax.random.key(1), len(split), 16)[:2]
step = train_steps.lower(state, data, idx, jax.random.key(2), 0, 2).compile()
forward = train._gather_batch.lower(data, mesh, np.arange(64)).compile()
hlo = step.as_text() + forward.as_text()
gathered = [int(m) for m in re.findall(r'all-gather[.0-9]* = [a-z0-9]+\[(\d+)', hlo)]
print(json.dumps({
    'mesh': dict(mesh.shape), 'shape': list(v2d.shape),
    'shards': sorted(list(s.data.shape) for s in v2d.addressable_shards),
    'split_bytes': int(split.video_2d.nbytes),
    'temp_bytes': [int(c.memory_analysis().temp_size_in_bytes) for c in (step, forward)],
    'all_gathered_rows': gathered,
    'predict_equal': bool(np.array_equal(
        train.predict(model, state.params, split, 64)['frame_prob'],
        train.predict(model, state.params, placement.put_split(split, mesh), 64)['frame_prob'])),
}))
'''


def test_features_are_sharded_along_data_and_never_gathered_whole():
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4',
         'PYTHONPATH': str(ROOT)}
  got = json.loads(subprocess.run([sys.executable, '-c', FOUR_DEVICES], cwd=ROOT, env=env,
                                  check=True, capture_output=True, text=True).stdout)
  assert got['mesh'] == {'seed': 1, 'data': 4}
  assert got['shape'] == [804, 10, 2048]
  assert got['shards'] == [[201, 10, 2048]] * 4
  # Each device gathers the batch rows it holds, and only batches (16 or 64 rows) are
  # all-gathered: no device ever makes the whole split.
  assert got['all_gathered_rows'] and max(got['all_gathered_rows']) <= 64
  assert max(got['temp_bytes']) < got['split_bytes']
  assert got['predict_equal']


def test_put_clips_pads_to_the_data_axis_and_keeps_what_is_placed():
  mesh = placement.make_mesh(1)
  split = synthetic.generate_split(5, 0, 'val')
  placed = placement.put_split(split, mesh)
  assert placed.video_2d.shape[0] == -(-5 // mesh.shape['data']) * mesh.shape['data']
  np.testing.assert_array_equal(np.asarray(placed.video_2d)[:5], split.video_2d)
  assert placement.put_split(placed, mesh).audio is placed.audio  # No second copy.
  assert placed.names is split.names and isinstance(placed.audio, jax.Array)
  if mesh.shape['data'] == 1 and jax.default_backend() == 'cpu':
    # The generator's arrays start on 64-byte boundaries, which XLA's CPU client takes in
    # place: the device array is the host array, held once.
    assert split.video_2d.ctypes.data % 64 == 0
    assert placed.video_2d.unsafe_buffer_pointer() == split.video_2d.ctypes.data
