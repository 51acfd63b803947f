"""What a report says about the machine it was measured on."""

import io
import os

import pytest

from cifar_jax.reporting import progress
from cifar_jax.reporting import records


def test_vector_extensions_name_each_extension_the_cpu_flags_have():
  avx2_only = {'fpu', 'sse4_2', 'avx', 'avx2', 'fma'}
  sapphire_rapids = avx2_only | {
      'avx512f',
      'avx512bw',
      'avx512_bf16',
      'avx512_vnni',
      'amx_bf16',
      'amx_tile',
      'amx_int8',
  }
  assert records.vector_extensions(avx2_only) == ['AVX2']
  assert records.vector_extensions(sapphire_rapids) == [
      'AVX2',
      'AVX-512',
      'AVX512_BF16',
      'AMX',
  ]
  assert records.vector_extensions({'avx2', 'avx512f'}) == ['AVX2', 'AVX-512']
  assert records.vector_extensions({'sse2'}) == []


@pytest.mark.skipif(
    not os.path.exists('/proc/cpuinfo'), reason='no /proc/cpuinfo (not Linux)'
)
def test_the_machine_line_names_this_cpus_extensions():
  line = records.machine_description()
  assert 'CPU cores (' in line  # The tests run on the CPU.
  with open('/proc/cpuinfo') as f:
    flags = next(
        set(l.split(':', 1)[1].split()) for l in f if l.startswith('flags')
    )
  for name in records.vector_extensions(flags):
    assert name in line


def test_the_eta_leaves_out_what_came_before_the_mark(monkeypatch):
  """A minute of restoring and compiling, then steps of 0.1 s: the ETA is
  the steps' (before the mark it is unknown, '?'), not the minute's."""
  now = [0.0]
  monkeypatch.setattr(progress.time, 'monotonic', lambda: now[0])
  out = io.StringIO()
  bar = progress.ProgressBar(101, out=out)
  now[0] = 60.0  # The first step, with its one-off costs.
  bar.update(1, {'loss': 1.0})
  bar.mark(1)
  now[0] = 61.0  # Ten more steps.
  bar.update(11, {'loss': 1.0})
  first, second = out.getvalue().splitlines()
  assert ' - ETA: ?s - ?ms/step - loss: 1.0000' in first
  assert ' - ETA: 9s - 100ms/step - ' in second
