"""Command line: `python -m cifar_jax.main --config configs/simple.py`.

Kept short on purpose: it parses flags, picks the run directory and calls
`train.train_and_evaluate(config, workdir)`. Any config key can be overridden,
e.g. `--config.num_epochs=3`; an unknown key is refused by the flag parser.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from cifar_jax import cli
from cifar_jax import train

def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config_path = config_flags.get_config_filename(flags.FLAGS['config'])
  workdir = cli.WORKDIR.value or cli.default_workdir(config_path)
  logging.info('JAX process %d/%d, devices: %s', jax.process_index(),
               jax.process_count(), jax.devices())
  logging.info('Config %s, overrides %s, workdir %s', config_path,
               config_flags.get_override_values(flags.FLAGS['config']),
               workdir)
  with cli.exit_on_errors():
    train.train_and_evaluate(cli.CONFIG.value, workdir)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
