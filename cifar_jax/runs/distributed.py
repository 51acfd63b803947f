"""Joining a multi-process (multi-host) run: `jax.distributed.initialize`.

One process runs per host (or per GPU under SLURM); together they see every
device of the job as one mesh, and the same jitted program runs on all of
them. This must happen before JAX touches a device, so `main` calls it first.
"""

import os

from absl import logging

from cifar_jax.errors import UserError

MODES = ('auto', 'on', 'off')


def cluster_detected(environ=os.environ) -> str | None:
  """The launcher that started several processes of this job, or None.

  Only launches of more than one process count: a one-task SLURM job or a
  single TPU VM needs no distributed system. (A multi-host Cloud TPU slice
  on GCE is found through its metadata server, which is not queried here:
  pass --distributed=on there.)
  """

  def count(name):
    try:
      return int(environ.get(name, '1'))
    except ValueError:
      return 1

  if 'JAX_COORDINATOR_ADDRESS' in environ:
    return 'JAX_COORDINATOR_ADDRESS'
  if 'SLURM_JOB_ID' in environ and count('SLURM_NTASKS') > 1:
    return 'SLURM'
  if 'OMPI_MCA_orte_hnp_uri' in environ and count('OMPI_COMM_WORLD_SIZE') > 1:
    return 'Open MPI'
  hosts = environ.get('TPU_WORKER_HOSTNAMES') or environ.get(
      'TPU_PROCESS_ADDRESSES', ''
  )
  if len(hosts.split(',')) > 1:
    return 'multi-host TPU'
  return None


def initialize(
    mode: str = 'auto',
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
  """Starts JAX's distributed system when this is a multi-process run:
  `mode` 'on' always (JAX finds the cluster on Cloud TPU, SLURM and Open
  MPI), 'off' never, 'auto' with the three explicit arguments (process 0's
  'host:port', for clusters JAX cannot detect) or `cluster_detected()`.
  Raises UserError for bad arguments or processes that cannot meet.
  """
  if mode not in MODES:
    raise UserError(f'--distributed={mode}: expected one of {MODES}.')
  explicit = (coordinator_address, num_processes, process_id)
  if any(a is not None for a in explicit) and None in explicit:
    raise UserError(
        '--coordinator_address, --num_processes and '
        '--process_id go together: give all three or none.'
    )
  if mode == 'off':
    return
  detected = cluster_detected()
  if mode == 'auto' and coordinator_address is None and detected is None:
    return
  how = 'explicit flags' if coordinator_address else detected or 'auto'
  # Imported here: `main` imports this module before it parses the flags.
  import jax  # pylint: disable=g-import-not-at-top

  logging.info('Starting jax.distributed (%s).', how)
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  except (RuntimeError, ValueError) as e:
    raise UserError(f'jax.distributed.initialize failed: {e}') from e
  logging.info('Process %d of %d; %d local of %d devices.',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())  # fmt: skip
