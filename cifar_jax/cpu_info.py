"""What /proc/cpuinfo says of this machine's CPU: its model and its flags.

One reader for the two uses: the machine line of reports and benchmarks
(`reporting.records.machine_description`) and the choice of the convolution kernels
by instruction set (`cpu.conv3x3.method_for`).
"""

import pathlib
import platform

CPUINFO = pathlib.Path('/proc/cpuinfo')


def parse(cpuinfo: str) -> tuple[str, frozenset[str]]:
  """The first CPU's model name ('' if none) and flags in cpuinfo's text."""
  model, flags = '', None
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(':')
    if key.strip() == 'model name' and not model:
      model = value.strip()
    elif key.strip() == 'flags' and flags is None:
      flags = frozenset(value.split())
  return model, flags or frozenset()


def read() -> tuple[str, frozenset[str]]:
  """This machine's CPU model and flags; ('', no flags) off x86-64 Linux."""
  if platform.machine() not in ('x86_64', 'AMD64'):
    return '', frozenset()
  try:
    return parse(CPUINFO.read_text())
  except OSError:
    return '', frozenset()


def flags() -> frozenset[str]:
  """This machine's CPU flags (e.g. 'avx2', 'avx512f'), as cpuinfo names them."""
  return read()[1]
