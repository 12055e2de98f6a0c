"""What the dense benchmark updates: parameter trees and the four TF paths."""

import dataclasses

import ml_dtypes  # noqa: F401  (numpy's bfloat16, for Workload.arrays)
import numpy as np

HYPERPARAMS = dict(learning_rate=1e-3, rho=0.9, epsilon=1e-7)


@dataclasses.dataclass(frozen=True)
class Path:
  """One of TF's dense RMSprop paths and the arrays its step must move.

  ``reads`` counts the gradient, the parameter and each slot; ``writes`` the
  parameter and each slot. Every array is read and written once at best.
  """

  name: str
  momentum: float
  centered: bool

  @property
  def writes(self) -> int:
    return 2 + (self.momentum > 0) + self.centered

  @property
  def reads(self) -> int:
    return self.writes + 1


PATHS = (
  Path("plain", 0.0, False),
  Path("momentum", 0.9, False),
  Path("centered", 0.0, True),
  Path("momentum+centered", 0.9, True),
)


@dataclasses.dataclass(frozen=True)
class Workload:
  """A float32 parameter tree, given as ``{name: shape}``.

  Attributes:
    name: the label in tables.
    shapes: leaf name to shape.
    time_first_call: also time the first call (trace and compile) of each
      contender, repeated ``compile_reps`` times with fresh functions.
    headline_only: time only the headline contenders (to bound the run
      time of the largest workload).
  """

  name: str
  shapes: dict
  time_first_call: bool = False
  headline_only: bool = False

  @property
  def size(self) -> int:
    return sum(int(np.prod(s)) for s in self.shapes.values())

  def arrays(self, seed: int = 0, dtype="float32"):
    """Returns ``(params, grads)``: dicts of numpy arrays of ``dtype``.

    The values are drawn in float32 and cast, so every dtype sees the same
    numbers (rounded). Each contender puts (and donates) its own copy.
    """
    rng = np.random.default_rng(seed)
    params, grads = {}, {}
    for name, shape in self.shapes.items():
      params[name] = rng.standard_normal(shape, dtype=np.float32)
      grads[name] = rng.standard_normal(shape, dtype=np.float32) * 1e-3
    cast = lambda tree: {
      k: v.astype(dtype, copy=False) for k, v in tree.items()
    }
    return cast(params), cast(grads)


def resnet50_shapes(
  layout: str, width_divisor: int = 1, blocks: tuple = (3, 4, 6, 3)
) -> dict:
  """The 161 trainable leaves of Keras' ResNet-50 (25.6M params).

  53 bias-free convolutions, a BatchNorm ``gamma``/``beta`` pair after each
  and the classifier's kernel and bias.

  Args:
    layout: ``"HWIO"`` (TF/Keras/flax) or ``"OIHW"`` (PyTorch) conv kernels.
    width_divisor: divides every channel count (for a smoke test).
    blocks: bottleneck blocks per stage; fewer make a smaller tree.

  Returns:
    ``{leaf name: shape}``.
  """
  if layout not in ("HWIO", "OIHW"):
    raise ValueError(f"layout must be 'HWIO' or 'OIHW', got {layout!r}.")
  shapes = {}

  def conv(name, k, cin, cout):
    kernel = (k, k, cin, cout) if layout == "HWIO" else (cout, cin, k, k)
    shapes[f"{name}/kernel"] = kernel
    shapes[f"{name}/bn/gamma"] = (cout,)
    shapes[f"{name}/bn/beta"] = (cout,)

  d = width_divisor
  conv("conv1", 7, 3, 64 // d)
  cin = 64 // d
  for stage, (stage_blocks, stage_width) in enumerate(
    zip(blocks, (64, 128, 256, 512)), start=2
  ):
    width = stage_width // d
    for block in range(1, stage_blocks + 1):
      name = f"conv{stage}_block{block}"
      if block == 1:
        conv(f"{name}/0", 1, cin, 4 * width)
      conv(f"{name}/1", 1, cin, width)
      conv(f"{name}/2", 3, width, width)
      conv(f"{name}/3", 1, width, 4 * width)
      cin = 4 * width
  shapes["predictions/kernel"] = (cin, 1000 // d)
  shapes["predictions/bias"] = (1000 // d,)
  return shapes


def dense_paths(small: bool) -> tuple:
  """All four paths, or the two extremes for a ``--small`` smoke run."""
  return (PATHS[0], PATHS[-1]) if small else PATHS


def dense_workloads(small: bool) -> list:
  """The workloads of a full run, or of a ``--small`` smoke run."""
  if small:
    return [
      Workload("leaf 256K", {"w": (1 << 18,)}),
      Workload(
        "conv-mini OIHW",
        resnet50_shapes("OIHW", 16, (1, 0, 0, 0)),
        time_first_call=True,
      ),
    ]
  return [
    Workload("leaf 1M", {"w": (1 << 20,)}),
    Workload("leaf 16M", {"w": (1 << 24,)}),
    Workload("leaf 64M", {"w": (1 << 26,)}, headline_only=True),
    Workload("ResNet-50 HWIO", resnet50_shapes("HWIO"), time_first_call=True),
    Workload("ResNet-50 OIHW", resnet50_shapes("OIHW")),
  ]
