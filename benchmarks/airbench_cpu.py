"""airbench (`pip install airbench`, PyTorch), on a CPU in float32 or float64.

airbench94/95/96 are written for one CUDA GPU and float16. To run the
package's own code unchanged on a CPU, `on_cpu(dtype)` changes exactly
these things while it is active, and nothing else:

1. `torch.nn.Module.half()` and `.cuda()` return the module as it is, and
   PyTorch's default dtype is `dtype`, so `make_net94/95/96` make the
   network in `dtype` on the CPU.
2. `airbench.utils.CifarLoader` loads its data file onto the CPU (its
   `gpu=0` default means CUDA device 0) and keeps the images in `dtype`
   (its `images.half() / 255` becomes `images.to(dtype) / 255`).
3. `torch.cuda.Event` and `torch.cuda.synchronize` become a host clock
   (airbench times its runs with CUDA events).
4. With float64 (the tests): `torch.half` and `torch.float` name float64
   and `Tensor.float()` returns float64, so what airbench casts to 32 bits
   (the whitening's patches) stays float64 and its Lookahead, which
   averages the variables of those dtypes, averages float64 ones.

The data is airbench's own format, `<root>/cifar10/{train,test}.pt` (uint8
images (N, 32, 32, 3), labels, class names), written by `write_data` from
the arrays cifar_jax reads, so both sides train on the same images in the
same order. airbench reads `cifar10/` relative to the working directory.

`train_recorded` trains with airbench's `utils.train` and records, at every
training step, the batch its loader yielded, the network's variables
before it and the logits it returns: tests/airbench_test.py replays those
steps in cifar_jax.
"""

import contextlib
import dataclasses
import importlib
import importlib.metadata
import math
import os
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch

from airbench import utils as airbench_utils
from benchmarks import reference_cpu
from benchmarks.reference_cpu import HostEvent

# Our config -> airbench's module, its make_net and train functions.
RECIPES = {
    'fast94': ('lib_airbench94', 'make_net94', 'train94'),
    'fast95': ('lib_airbench95', 'make_net95', 'train95'),
    'fast96': ('lib_airbench96', 'make_net96', 'train96'),
}


def recipe(name: str) -> Any:
  """airbench's module of the recipe our config `name` implements."""
  return importlib.import_module(f'airbench.{RECIPES[name][0]}')


@contextlib.contextmanager
def on_cpu(dtype: torch.dtype = torch.float32) -> Iterator[None]:
  """airbench's code on the CPU in `dtype` (the changes above)."""
  loader_init = airbench_utils.CifarLoader.__init__

  def cpu_loader_init(self, path, *args, gpu='cpu', **kwargs):
    del gpu
    loader_init(self, path, *args, gpu='cpu', **kwargs)
    train = kwargs.get('train', args[0] if args else True)
    data = torch.load(
        os.path.join(path, 'train.pt' if train else 'test.pt'),
        map_location='cpu',
    )
    self.images = (data['images'].to(dtype) / 255).permute(0, 3, 1, 2)

  replacements = {
      (torch.nn.Module, 'half'): lambda self: self,
      (torch.nn.Module, 'cuda'): lambda self, device=None: self,
      (airbench_utils.CifarLoader, '__init__'): cpu_loader_init,
      (torch.cuda, 'Event'): HostEvent,
      (torch.cuda, 'synchronize'): lambda device=None: None,
  }
  if dtype == torch.float64:
    replacements.update({
        (torch, 'half'): torch.float64,
        (torch, 'float'): torch.float64,
        (torch.Tensor, 'float'): lambda self, **k: self.to(torch.float64),
    })  # fmt: skip
  default_dtype = torch.get_default_dtype()
  torch.set_default_dtype(dtype)
  try:
    with reference_cpu.patched(replacements):
      yield
  finally:
    torch.set_default_dtype(default_dtype)


@contextlib.contextmanager
def device() -> Iterator[None]:
  """airbench as it is on a CUDA GPU, else `on_cpu()`."""
  if torch.cuda.is_available():
    yield
  else:
    with on_cpu():
      yield


def write_data(
    root: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    class_names: tuple[str, ...],
) -> None:
  """`<root>/cifar10/{train,test}.pt` in airbench's format."""
  os.makedirs(os.path.join(root, 'cifar10'), exist_ok=True)
  for name, (images, labels) in (('train', train), ('test', test)):
    torch.save(
        {
            'images': torch.from_numpy(np.array(images, np.uint8)),
            'labels': torch.from_numpy(np.asarray(labels, np.int64)),
            'classes': list(class_names),
        },
        os.path.join(root, 'cifar10', f'{name}.pt'),
    )


@dataclasses.dataclass
class Recording:
  """What airbench's training did, forward pass by forward pass."""

  # Variables (parameters and BatchNorm buffers) before each step, then
  # the final ones: len(steps) + 1 entries of name -> float64 array.
  variables: list[dict[str, np.ndarray]] = dataclasses.field(
      default_factory=list
  )
  logits: list[np.ndarray] = dataclasses.field(default_factory=list)
  # (N, C, H, W) inputs and labels of each step, as the loader yielded them.
  batches: list[tuple[np.ndarray, np.ndarray]] = dataclasses.field(
      default_factory=list
  )
  # The variables as `make_net` made them, before the whitening init (its
  # Lookahead copies them then).
  created: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  model: Any = None


def _snapshot(net: torch.nn.Module) -> dict[str, np.ndarray]:
  return {
      k: v.detach().double().numpy().copy()
      for k, v in net.state_dict().items()
      if v.is_floating_point()
  }


def train_recorded(
    name: str,
    loader: Any,
    epochs: float,
    widths: dict[str, int] | None = None,
) -> Recording:
  """airbench's `utils.train` of recipe `name` on `loader`, recorded.

  Every hyperparameter is the recipe's own (its `hyp`), except the number
  of epochs and, for small tests, the widths. Call inside `on_cpu()`.
  """
  module = recipe(name)
  hyp = module.hyp
  make_net = getattr(module, RECIPES[name][1])
  record = Recording()

  def recorded_net():
    net = make_net(**({'widths': widths} if widths else {}))
    record.created = _snapshot(net)

    def before(module_, inputs):
      del inputs
      if module_.training:
        record.variables.append(_snapshot(module_))

    def after(module_, inputs, output):
      del inputs
      if module_.training:
        record.logits.append(output.detach().double().numpy().copy())

    net.register_forward_pre_hook(before)
    net.register_forward_hook(after)
    return net

  class RecordedLoader(type(loader)):

    def __iter__(self):
      for inputs, labels in super().__iter__():
        batch = (inputs.double().numpy().copy(), labels.numpy().copy())
        record.batches.append(batch)
        yield inputs, labels

  loader.__class__ = RecordedLoader
  opt = hyp['opt']
  record.model = airbench_utils.train(
      loader,
      epochs,
      opt['label_smoothing'],
      opt['lr'],
      opt['bias_scaler'],
      opt['momentum'],
      opt['weight_decay'],
      opt['whiten_bias_epochs'],
      hyp['net']['tta_level'],
      recorded_net,
      run=0,
      verbose=False,
  )
  record.variables.append(_snapshot(record.model))
  return record


def tta_logits(model: torch.nn.Module, level: int) -> np.ndarray:
  """airbench's `infer` on its test set (`cifar10/test.pt`)."""
  loader = airbench_utils.CifarLoader('cifar10', train=False, batch_size=2000)
  return airbench_utils.infer(model, loader, level).double().numpy()


def train_and_time(
    name: str, seed: int, progress: Callable[[int], None] = lambda total: None
) -> tuple[float, float]:
  """(TTA accuracy, seconds) of one airbench run with its own settings.

  Timed as airbench times itself (whitening init, the epochs and the final
  TTA evaluation; not loading the data, building the loader or, on a GPU,
  its one-step warm-up), on the host clock (the final accuracy is read
  back, so the GPU's work is done). `progress(total_steps)` is called at
  every training step. Call inside `device()`, in the directory holding
  cifar10/.
  """
  module = recipe(name)
  hyp = module.hyp
  torch.manual_seed(seed)
  loader = airbench_utils.CifarLoader(
      'cifar10',
      train=True,
      batch_size=hyp['opt']['batch_size'],
      aug=hyp['aug'],
      altflip=True,
  )
  total = math.ceil(len(loader) * hyp['opt']['train_epochs'])
  make_net = getattr(module, RECIPES[name][1])

  def net_with_progress():
    net = make_net()
    net.register_forward_pre_hook(
        lambda m, inputs: progress(total) if m.training else None
    )
    return net

  train = getattr(module, RECIPES[name][2])
  if torch.cuda.is_available():  # One step first, as airbench's warmup.
    train(loader, run=-1, verbose=True)
  test = airbench_utils.CifarLoader('cifar10', train=False, batch_size=2000)
  start = time.perf_counter()
  model = train(loader, make_net=net_with_progress, run=0, verbose=False)
  accuracy = airbench_utils.evaluate(model, test, hyp['net']['tta_level'])
  return accuracy, time.perf_counter() - start


def versions() -> str:
  """'airbench 0.1.8, torch 2.14.1+cu130' (what ran)."""
  return (
      f'airbench {importlib.metadata.version("airbench")}, '
      f'torch {torch.__version__}'
  )
