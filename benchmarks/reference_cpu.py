"""The newer CIFAR-10 records (../shared/reference/), run unchanged on a CPU.

airbench94_muon.py and hiverge_cifar10_speedrun.py are scripts for one
CUDA GPU in float16. `load(name)` imports one as it is, and `on_cpu(...)`
changes only what a CPU needs, while it is active:

1. `torch.compile` returns the function as it is (no Inductor build);
2. `CifarLoader.__init__` takes the given arrays onto the CPU in `dtype`
   (their own downloads CIFAR-10 through torchvision onto CUDA as
   float16); its `__iter__` (flips, crops, colour jitter, shuffling) stays
   theirs, and `Recording.batches` keeps every training batch it yields;
3. `torch.cuda.Event` and `torch.cuda.synchronize` run on the host clock;
4. with `dtype=torch.float64` (the tests): `torch.half` names float64,
   `Tensor.bfloat16` returns the tensor and `Tensor.float` gives float64,
   so what the scripts keep in 16 or 32 bits (Newton-Schulz, hiverge's
   momentum and normalisation constants, the whitening's patches) is
   computed in float64 too.

The directory is $CIFAR_JAX_REFERENCE, else `../shared/reference` beside
the repository. `narrow` makes their network with narrower blocks (their
own `ConvGroup`s), for tests. `train_and_time` times one whole run, on a
CPU as above or on a GPU as the script runs there.
"""

import contextlib
import dataclasses
import importlib.util
import os
import sys
import time
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

# Our config -> the reference script that is its recipe.
SCRIPTS = {
    'fast94_muon': 'airbench94_muon.py',
    'fast94_hive': 'hiverge_cifar10_speedrun.py',
}
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def directory() -> str:
  return os.environ.get(
      'CIFAR_JAX_REFERENCE',
      os.path.join(os.path.dirname(_REPO), 'shared', 'reference'),
  )


def missing(name: str) -> str | None:
  """Why the reference of config `name` cannot run here, or None."""
  path = os.path.join(directory(), SCRIPTS[name])
  return None if os.path.exists(path) else f'{path} not found'


class HostEvent:
  """`torch.cuda.Event(enable_timing=True)` on the host clock; `total`
  adds up every interval read (a script's own timing, to the second)."""

  total = 0.0

  def __init__(self, enable_timing: bool = False):
    del enable_timing
    self.time = 0.0

  def record(self) -> None:
    self.time = time.perf_counter()

  def elapsed_time(self, end: 'HostEvent') -> float:
    HostEvent.total += end.time - self.time
    return 1e3 * (end.time - self.time)  # Milliseconds, as CUDA's.


@contextlib.contextmanager
def patched(replacements: dict[tuple[Any, str], Any]) -> Iterator[None]:
  saved = {key: getattr(*key) for key in replacements}
  try:
    for (owner, name), value in replacements.items():
      setattr(owner, name, value)
    yield
  finally:
    for (owner, name), value in saved.items():
      setattr(owner, name, value)


def _no_compile(fn=None, **kwargs):
  del kwargs
  return fn if fn is not None else (lambda f: f)


def _as_float64(dtype: torch.dtype) -> dict[tuple[Any, str], Any]:
  """In float64: the scripts' float16, bfloat16 and float32 become float64."""
  if dtype != torch.float64:
    return {}
  return {
      (torch, 'half'): torch.float64,
      (torch.Tensor, 'bfloat16'): lambda self, *a, **k: self,
      (torch.Tensor, 'float'): lambda self, *a, **k: self.to(torch.float64),
  }


def load(
    name: str, dtype: torch.dtype = torch.float32, compiled: bool = False
) -> Any:
  """The reference script of config `name`, imported (a fresh module);
  `compiled`: with `torch.compile` as it is (a GPU's)."""
  path = os.path.join(directory(), SCRIPTS[name])
  spec = importlib.util.spec_from_file_location(f'reference_{name}', path)
  module = importlib.util.module_from_spec(spec)
  # The scripts read their own source (sys.argv[0]) as they import.
  changes = {(sys, 'argv'): [path]}
  if not compiled:
    changes[(torch, 'compile')] = _no_compile
  with patched({**changes, **_as_float64(dtype)}):
    spec.loader.exec_module(module)
  return module


@dataclasses.dataclass
class Recording:
  """What a reference's training did, forward pass by forward pass."""

  # Before each training step, then the final: name -> float64 array.
  variables: list[dict[str, np.ndarray]] = dataclasses.field(
      default_factory=list
  )
  batches: list[tuple[np.ndarray, np.ndarray]] = dataclasses.field(
      default_factory=list
  )  # (N, C, H, W) inputs and labels, as the loader yielded them.
  logits: list[np.ndarray] = dataclasses.field(default_factory=list)


def _loader_class(module, data, dtype, record, train_batch_size, device='cpu'):
  base = module.CifarLoader

  class Loader(base):
    """Their loader on given (N, H, W, C) uint8 images and labels."""

    def __init__(self, path, train=True, batch_size=500, aug=None):
      del path
      images, labels = data[train]
      self.images = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)
      self.images = self.images.to(device, dtype) / 255
      self.labels = torch.from_numpy(np.asarray(labels, np.int64)).to(device)
      self.normalize = module.T.Normalize(module.CIFAR_MEAN, module.CIFAR_STD)
      self.proc_images, self.epoch, self.aug = {}, 0, aug or {}
      if train and train_batch_size:
        batch_size = train_batch_size
      self.batch_size, self.drop_last, self.shuffle = batch_size, train, train
      self._indices = torch.empty(
          len(self.images), dtype=torch.long, device=device
      )

    def __iter__(self):
      for inputs, labels in base.__iter__(self):
        if self.shuffle and record is not None:
          record.batches.append(
              (inputs.double().numpy().copy(), labels.numpy().copy())
          )
        yield inputs, labels

  return Loader


@contextlib.contextmanager
def on_cpu(
    module: Any,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    dtype: torch.dtype = torch.float32,
    record: Recording | None = None,
    train_batch_size: int = 0,
) -> Iterator[None]:
  """`module` (from `load`) on the CPU in `dtype`, on these data; a
  `train_batch_size` replaces the one `main` fixes (its weight decay stays
  that of its own batch size), so that a test affords many steps."""
  data = {True: train, False: test}
  loader = _loader_class(module, data, dtype, record, train_batch_size)
  with patched({
      (torch, 'compile'): _no_compile,
      (module, 'CifarLoader'): loader,
      (torch.cuda, 'Event'): HostEvent,
      (torch.cuda, 'synchronize'): lambda device=None: None,
      **_as_float64(dtype),
  }):  # fmt: skip
    yield


def narrow(module: Any, widths: tuple[int, int, int], dtype) -> nn.Module:
  """Their CifarNet, its three blocks `widths` wide, in `dtype`."""
  model = module.CifarNet()
  whiten = model.whiten.out_channels
  model.layers = nn.Sequential(
      nn.GELU(),
      module.ConvGroup(whiten, widths[0]),
      module.ConvGroup(widths[0], widths[1]),
      module.ConvGroup(widths[1], widths[2]),
      nn.MaxPool2d(3),
  )
  model.head = nn.Linear(widths[2], 10, bias=False)
  return model.to(dtype)


def snapshot(model: nn.Module) -> dict[str, np.ndarray]:
  return {
      k: v.detach().double().numpy().copy()
      for k, v in model.state_dict().items()
      if v.is_floating_point()
  }


def train_recorded(module: Any, model: nn.Module, record: Recording) -> Any:
  """Their `main` on `model`, every training step recorded into `record`
  (the batches by the loader of `on_cpu`, which must be active); returns
  what `main` returns."""

  def before(net, args, kwargs):
    del args, kwargs
    if net.training:
      record.variables.append(snapshot(net))

  def after(net, args, kwargs, output):
    del args, kwargs
    if net.training:
      record.logits.append(output.detach().double().numpy().copy())

  hooks = [
      model.register_forward_pre_hook(before, with_kwargs=True),
      model.register_forward_hook(after, with_kwargs=True),
  ]
  try:
    result = module.main(0, model)
  finally:
    for hook in hooks:
      hook.remove()
  record.variables.append(snapshot(model))
  return result


def tta_logits(module: Any, model: nn.Module, level: int) -> np.ndarray:
  """Their `infer` on the test set of `on_cpu` (which must be active)."""
  loader = module.CifarLoader('', train=False, batch_size=2000)
  return module.infer(model, loader, level).double().numpy()


class _CudaEvent(torch.cuda.Event if torch.cuda.is_available() else object):
  """`torch.cuda.Event`, adding up every interval read into HostEvent.total."""

  def elapsed_time(self, end) -> float:
    milliseconds = super().elapsed_time(end)
    HostEvent.total += milliseconds / 1e3
    return milliseconds


def train_and_time(
    name: str, seed: int, train, test, progress=lambda: None
) -> tuple[float, float]:
  """(TTA accuracy, seconds) of one full run of the reference of config
  `name`, timed as the script times itself (whitening, training, the final
  TTA evaluation: not its per-epoch evaluations). On a CPU in float32
  (`on_cpu`); on a GPU as the script runs there (float16, compiled, after
  its warm-up run), only its loader reading these arrays. `progress()` is
  called at every training step."""
  gpu = torch.cuda.is_available()
  module = load(name, compiled=gpu)
  if gpu:
    data = {True: train, False: test}
    loader = _loader_class(module, data, torch.half, None, 0, 'cuda')
    context = patched({
        (module, 'CifarLoader'): loader, (torch.cuda, 'Event'): _CudaEvent
    })  # fmt: skip
  else:
    context = on_cpu(module, train, test)
  with context:
    if gpu:
      model = module.CifarNet().cuda().to(memory_format=torch.channels_last)
      model.compile(mode='max-autotune')
      module.main('warmup', model)
    else:
      model = module.CifarNet().to(torch.float32)
    model.register_forward_pre_hook(
        lambda net, args: progress() if net.training else None
    )
    torch.manual_seed(seed)
    HostEvent.total = 0.0
    result = module.main(seed, model)
  accuracy = result[1] if isinstance(result, tuple) else result
  return accuracy, HostEvent.total
