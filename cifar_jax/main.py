"""Trains a model on CIFAR-10, resuming its run directory if it has one.

  python -m cifar_jax.main --config configs/simple.py [--workdir DIR]
      [--config.key=value ...]

Any config key can be overridden, e.g. `--config.num_epochs=3`. Running the
same command again resumes from the newest checkpoint. (This module only
parses flags and calls `train.train_and_evaluate(config, workdir)`, after
joining the other processes of a multi-host run.)
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from cifar_jax import cli
from cifar_jax.runs import distributed
from cifar_jax.training import checks

CONFIG = cli.define_config()
WORKDIR = cli.define_workdir('Run directory; default ckpt/<config file name>.')
DISTRIBUTED = flags.DEFINE_enum(
    'distributed',
    'auto',
    distributed.MODES,
    'Start jax.distributed: auto (when launched as several processes by '
    'SLURM, Open MPI, a multi-host TPU or the flags below), on or off.',
)
COORDINATOR = flags.DEFINE_string(
    'coordinator_address',
    None,
    'host:port of process 0, for a multi-process '
    'run JAX cannot detect; with --num_processes and --process_id.',
)
NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Processes in the run.'
)
PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'This process, 0..num_processes-1.'
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config_path = config_flags.get_config_filename(flags.FLAGS['config'])
  workdir = WORKDIR.value or cli.default_workdir(config_path)
  with cli.exit_on_errors():
    checks.check(CONFIG.value)
    # JAX is imported only now: --help and a refused config never wait for it.
    import jax  # pylint: disable=g-import-not-at-top
    from cifar_jax import train  # pylint: disable=g-import-not-at-top

    distributed.initialize(
        DISTRIBUTED.value,
        COORDINATOR.value,
        NUM_PROCESSES.value,
        PROCESS_ID.value,
    )
    logging.info(
        'JAX process %d/%d, devices: %s',
        jax.process_index(),
        jax.process_count(),
        jax.devices(),
    )
    logging.info(
        'Config %s, overrides %s, workdir %s',
        config_path,
        config_flags.get_override_values(flags.FLAGS['config']),
        workdir,
    )
    train.train_and_evaluate(CONFIG.value, workdir)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
