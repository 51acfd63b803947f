"""The device mesh and the two shardings a run uses.

Data parallelism is JAX's SPMD: one `jax.jit` program over a 1-D device mesh
with axis 'data'. The state is replicated, each batch is sharded along
'data', and XLA inserts the gradient all-reduce; BatchNorm statistics are over
the global batch, as on Keras' single device. (This is pmap's modern form:
since JAX 0.8 pmap is itself built on jit + shard_map.)
"""

import dataclasses

import jax

from cifar_jax.errors import UserError

P = jax.sharding.PartitionSpec


def create_mesh(devices: list[jax.Device] | None = None) -> jax.sharding.Mesh:
  """`devices` (default: every device of every process) on one 'data' axis.

  Auto axes: under the Explicit default of `jax.make_mesh`, linen's Dropout
  fails to trace (a ShardingTypeError in its select; flax#5209, jax#37853).
  """
  devices = devices or jax.devices()
  return jax.make_mesh(
      (len(devices),),
      ('data',),
      devices=devices,
      axis_types=(jax.sharding.AxisType.Auto,),
  )


@dataclasses.dataclass(frozen=True)
class Shardings:
  """Where the state lives (everywhere) and where batches go (split)."""

  replicated: jax.sharding.NamedSharding
  batch: jax.sharding.NamedSharding

  @classmethod
  def of(cls, mesh: jax.sharding.Mesh) -> 'Shardings':
    return cls(
        jax.sharding.NamedSharding(mesh, P()),
        jax.sharding.NamedSharding(mesh, P('data')),
    )

  @property
  def platform(self) -> str:
    return self.replicated.mesh.devices.flat[0].platform


def check_divisible(name: str, value: int, mesh: jax.sharding.Mesh) -> None:
  """Every device gets an equal share of a global batch, or a UserError."""
  if value % mesh.devices.size:
    raise UserError(
        f'{name}={value} must be divisible by the number of devices '
        f'({mesh.devices.size}), since each gets an equal share of the '
        'global batch.'
    )
