"""The package's layers: every import goes down (cifar_jax/__init__.py)."""

import ast
import pathlib
import re

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'cifar_jax'
# Each folder or top-level module and its layer, bottom first.
LAYERS = {
    'errors': 1,
    'rules': 1,
    'cpu_info': 1,
    'data': 2,
    'cpu': 2,
    'models': 3,
    'reporting': 4,
    'training': 5,
    'config': 2,
    'runs': 6,
    'train': 7,
    'cli': 7,
    'rung_processes': 7,
    'rungs': 8,
    'main': 9,
    'evaluate': 9,
    'predict': 9,
    'ladder': 9,
    'show_augment': 9,
}


def _unit(module: str) -> str:
  """'cifar_jax.data.augment' -> 'data'; 'cifar_jax.train' -> 'train'."""
  return module.split('.')[1]


def _modules():
  for path in sorted(PACKAGE.rglob('*.py')):
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    if parts[-1] == '__init__':
      parts = parts[:-1]
    if len(parts) > 1:
      yield '.'.join(parts), path


def _imports(path: pathlib.Path) -> set[str]:
  """The cifar_jax modules (or packages) `path` imports."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module == 'cifar_jax':
        found |= {f'cifar_jax.{a.name}' for a in node.names}
      elif node.module.startswith('cifar_jax.'):
        found.add(node.module)
    elif isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith('cifar_jax.')}
  return found


FOLDERS = ('data', 'cpu', 'models', 'reporting', 'training', 'config', 'runs')


def test_every_module_belongs_to_a_layer():
  assert {_unit(m) for m, _ in _modules()} == set(LAYERS)


@pytest.mark.parametrize('folder', FOLDERS)
def test_each_folder_says_what_it_imports_and_imports_just_that(folder):
  doc = ast.get_docstring(ast.parse((PACKAGE / folder / '__init__.py')
                                    .read_text()))  # fmt: skip
  assert doc and 'Imports:' in doc, folder
  said = set(re.findall(r'`(\w+)`', doc.split('Imports:')[1])) & set(LAYERS)
  imported = {
      _unit(m)
      for path in (PACKAGE / folder).rglob('*.py')
      for m in _imports(path)
  }
  assert said == imported - {folder}


@pytest.mark.parametrize('module, path', list(_modules()))
def test_imports_go_down_the_layers(module, path):
  own = LAYERS[_unit(module)]
  for imported in _imports(path):
    unit = _unit(imported)
    assert LAYERS[unit] < own or unit == _unit(
        module
    ), f'{module} (layer {own}) imports {imported} (layer {LAYERS[unit]})'


SEAM = ('for_platform', 'Platform')


@pytest.mark.parametrize('module, path', list(_modules()))
def test_cpu_is_reached_only_through_its_seam_and_never_from_the_models(
    module, path
):
  """Outside cpu/, `from cifar_jax import cpu` and the seam's names only."""
  if _unit(module) in ('cpu', 'cpu_info'):
    return
  in_cpu = lambda name: name == 'cifar_jax.cpu' or name.startswith(
      'cifar_jax.cpu.'
  )
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      assert not in_cpu(node.module), f'{module} imports {node.module}'
      if node.module == 'cifar_jax' and _unit(module) == 'models':
        assert 'cpu' not in {a.name for a in node.names}, module
    elif isinstance(node, ast.Import):
      assert not any(in_cpu(a.name) for a in node.names), module
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
      if node.value.id == 'cpu':
        assert node.attr in SEAM, f'{module} uses cpu.{node.attr}'


COMMANDS = ('main', 'evaluate', 'predict', 'ladder', 'show_augment')


def _defines_or_exits(node: ast.AST) -> bool:
  """A flag definition, `sys.exit` or `app.run` called in `node`."""
  for call in ast.walk(node):
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
      name = call.func.attr
      if name.startswith(('DEFINE', 'define_')) or name in ('exit', 'run'):
        owner = getattr(call.func.value, 'id', '')
        if owner in ('flags', 'config_flags', 'cli', 'sys', 'app'):
          return True
  return False


@pytest.mark.parametrize('module, path', list(_modules()))
def test_importing_a_library_module_defines_no_flag_and_never_exits(
    module, path
):
  """Only the commands define flags when imported (so importing two in one
  process cannot clash) and may exit; the library does neither."""
  if _unit(module) in COMMANDS:
    return
  for statement in ast.parse(path.read_text()).body:
    if not isinstance(statement, (ast.FunctionDef, ast.ClassDef)):
      assert not _defines_or_exits(statement), (module, statement.lineno)


def test_the_commands_only_define_flags_and_call_the_library():
  for name in COMMANDS:
    tree = ast.parse((PACKAGE / f'{name}.py').read_text())
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert functions == ['main'], (name, functions)


@pytest.mark.parametrize(
    'path',
    sorted(PACKAGE.parent.glob('tests/*.py'))
    + [PACKAGE.parent / 'notebooks' / 'walkthrough.py'],
    ids=lambda p: p.name,
)
def test_the_tests_and_the_notebook_import_no_command(path):
  imported = _imports(path) | {
      f'cifar_jax.{a.name}'
      for node in ast.walk(ast.parse(path.read_text()))
      if isinstance(node, ast.ImportFrom) and node.module == 'cifar_jax'
      for a in node.names
  }
  assert not imported & {f'cifar_jax.{c}' for c in COMMANDS}, path.name


def test_the_models_name_no_cpu_implementation():
  # They get one `models.layers.Layers`; which one is the seam's business.
  for path in (PACKAGE / 'models').rglob('*.py'):
    text = path.read_text()
    for word in ('conv3x3', 'dropout_hash_once', 'cpu_info', 'pooling'):
      assert word not in text, f'{path.name} names {word!r}'
