"""Where arrays live: the device mesh and every placement on it.

The mesh has a `seed` axis, over which the models of several seeds (stacked on a leading
axis S) are sharded, and a `data` axis, along which batches and the clips of a split are
sharded. Everything that puts an array on a device goes through here, so that one place
decides the layout from one device to many and from one process to many.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from avvp_jax.data.split import FEATURES, Split


def seed_devices(num_seeds: int, num_devices: int) -> int:
  """How many devices the `seed` axis spans: S seeds on D devices take min(S, D), which must
  divide the other, so that every device holds as many seeds and as much of each batch."""
  if num_seeds < 1:
    raise ValueError(f'num_seeds must be at least 1, not {num_seeds}.')
  if num_seeds % num_devices and num_devices % num_seeds:
    fits = sorted({d for d in range(1, num_devices + 1) if num_devices % d == 0}
                  | {num_devices * 2, num_devices * 4})
    raise ValueError(
        f'num_seeds = {num_seeds} cannot be placed on {num_devices} devices: the seeds are '
        f'sharded over the devices, so one count must divide the other (e.g. num_seeds in '
        f'{fits}).')
  return min(num_seeds, num_devices)


def make_mesh(num_seeds: int = 1) -> Mesh:
  """A 2-D mesh over all devices: `seed` (`seed_devices` of them) x `data` (the rest)."""
  s = seed_devices(num_seeds, jax.device_count())
  return jax.make_mesh((s, jax.device_count() // s), ('seed', 'data'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def describe(seeds: list[int]) -> str:
  """Where the seeds of a run go, e.g. 'seeds [0, 1] on 4 devices, mesh seed 2 x data 2';
  refuses a seed count that the devices cannot place."""
  mesh = make_mesh(len(seeds))
  devices = jax.device_count()
  return (f'seeds {seeds} on {devices} device{"s" if devices > 1 else ""}, mesh '
          f'{" x ".join(f"{name} {size}" for name, size in mesh.shape.items())}')


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array: inputs, one model's parameters."""
  return NamedSharding(mesh, P())


def stacked(mesh: Mesh) -> NamedSharding:
  """A leading axis of S seeds, sharded over `seed`: models, states, targets of S seeds."""
  return NamedSharding(mesh, P('seed'))


def batched(mesh: Mesh) -> NamedSharding:
  """A leading batch axis, sharded along `data`."""
  return NamedSharding(mesh, P('data'))


def clips(mesh: Mesh) -> NamedSharding:
  """A split's per-clip arrays (N, ...), sharded along `data` and replicated over `seed`:
  each of the `data` axis's devices holds N / data clips, so that a split larger than one
  device's memory fits on several; a step gathers its batch from the shards, and only the
  gathered batch is all-gathered (tests/test_placement.py)."""
  return NamedSharding(mesh, P('data'))


def put_clips(tree, mesh: Mesh):
  """Per-clip arrays (N, ...) on the mesh (`clips`), N padded with zero rows, which no index
  reaches, up to a multiple of the `data` axis. An array already placed so stays as it is;
  a device array placed otherwise is moved on the devices, not through the host."""
  d = mesh.shape['data']

  def put(x):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(clips(mesh), x.ndim):
      return x
    xp = jnp if isinstance(x, jax.Array) else np
    x = xp.asarray(x)
    if len(x) % d:
      x = xp.concatenate([x, xp.zeros((-len(x) % d,) + x.shape[1:], x.dtype)])
    return jax.device_put(x, clips(mesh))

  return jax.tree.map(put, tree)


def put_split(split: Split, mesh: Mesh) -> Split:
  """The split with its features on the mesh (`put_clips`: (N', ...), N' >= N) instead of on
  the host: the run holds one copy of them, where the steps read it."""
  return dataclasses.replace(split, **put_clips({k: getattr(split, k) for k in FEATURES}, mesh))


def params_sharding(mesh: Mesh, seeds: bool) -> NamedSharding:
  """Parameters (or a state) of S stacked models (`seeds`), or of one model."""
  return stacked(mesh) if seeds else replicated(mesh)


def shardable(batch_size: int, mesh: Mesh) -> int:
  """The smallest batch size >= `batch_size` that the `data` axis divides."""
  return -(-batch_size // mesh.shape['data']) * mesh.shape['data']


def restore_target(tree, mesh: Mesh | None = None):
  """Shapes and dtypes of a saved tree (Orbax metadata), replicated over this process's
  devices (`mesh` by default all of them): restores a checkpoint written on any number of
  devices."""
  if mesh is None:
    mesh = Mesh(np.array(jax.devices()), ('data',))
  sharding = replicated(mesh)
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)


def host(x: jax.Array) -> np.ndarray:
  """`x` as a host array, gathered from every process where it spans several."""
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
