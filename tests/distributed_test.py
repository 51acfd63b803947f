"""When a run joins jax.distributed, and what a bad launch says."""

import pytest

from cifar_jax.errors import UserError
from cifar_jax.runs import distributed
from conftest import run_main


@pytest.mark.parametrize(
    'environ, expected',
    [
        ({}, None),
        ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}, None),
        ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4'}, 'SLURM'),
        (
            {'OMPI_MCA_orte_hnp_uri': 'x', 'OMPI_COMM_WORLD_SIZE': '2'},
            'Open MPI',
        ),
        ({'OMPI_MCA_orte_hnp_uri': 'x', 'OMPI_COMM_WORLD_SIZE': '1'}, None),
        ({'TPU_WORKER_HOSTNAMES': 'w0'}, None),
        ({'TPU_WORKER_HOSTNAMES': 'w0,w1,w2,w3'}, 'multi-host TPU'),
        (
            {'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'},
            'JAX_COORDINATOR_ADDRESS',
        ),
    ],
)
def test_only_multi_process_launches_are_detected(environ, expected):
  assert distributed.cluster_detected(environ) == expected


def test_explicit_flags_must_come_together():
  with pytest.raises(UserError, match='go together'):
    distributed.initialize('auto', '127.0.0.1:1234', None, 0)


def test_single_process_run_does_not_start_the_distributed_system():
  distributed.initialize('auto')
  distributed.initialize('off', None, None, None)
  import jax  # pylint: disable=g-import-not-at-top

  assert jax.process_count() == 1


@pytest.mark.slow
def test_cli_half_given_cluster_flags_fail_in_one_line(tmp_path):
  r = run_main(
      '--config',
      'configs/test.py',
      '--workdir',
      tmp_path,
      '--coordinator_address=127.0.0.1:1234',
      timeout=120,
  )
  assert r.returncode == 1
  assert 'go together' in r.stderr and 'Traceback' not in r.stderr
