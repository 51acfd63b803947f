"""Reading the CPU's model and flags from /proc/cpuinfo's text."""

from cifar_jax import cpu_info


def test_flags_are_whole_words_of_the_first_flags_line():
  model, flags = cpu_info.parse(
      'processor\t: 0\n'
      'model name\t: Some CPU with avx512f in its name\n'
      'flags\t\t: fpu avx2 fma avx512fp16 avx512bw\n'
      'processor\t: 1\n'
      'model name\t: Another\n'
      'flags\t\t: fpu avx512f\n'
  )
  assert model == 'Some CPU with avx512f in its name'
  assert flags == {'fpu', 'avx2', 'fma', 'avx512fp16', 'avx512bw'}
  assert 'avx512f' not in flags  # Neither the name's nor the second CPU's.


def test_text_without_a_flags_line_has_no_flags():
  assert cpu_info.parse('model name: avx512f') == ('avx512f', frozenset())
  assert cpu_info.parse('') == ('', frozenset())


def test_off_x86_there_are_no_flags(monkeypatch):
  monkeypatch.setattr(cpu_info.platform, 'machine', lambda: 'aarch64')
  assert cpu_info.read() == ('', frozenset())
  assert cpu_info.flags() == frozenset()
