"""The ``rescale`` probe: which sharpness measures survive a reparametrization?

Dinh, Pascanu, Bengio & Bengio (2017, ICML, "Sharp minima can generalize for
deep nets") observe that a ReLU network computes the same function after one
layer's weights and bias are multiplied by ``c > 0`` and the next layer's
weights by ``1/c`` (ReLU is positively homogeneous: ``relu(c·z) = c·relu(z)``),
yet its Hessian changes: the blocks of the first layer scale by ``1/c²`` and
those of the second by ``c²``, so λ_max and ‖H‖_F can be made as large as one
likes at an unchanged function, and so at an unchanged generalization gap.
Measures defined in coordinates scaled by ``|θ|`` (adaptive sharpness, Kwon et
al. 2021; the magnitude-aware PAC-Bayes σ*) are invariant by construction: the
rescaling maps ``|θ| ⊙ z`` to the rescaled ``|θ| ⊙ z``.

The probe takes one trained model, rescales the chosen pair of layers for every
``c`` of a grid, checks that the function is unchanged (the largest change of
any output over the analysis set, relative to the largest output, must stay
below ``function_rtol``; batch norm between the layers, or any other
non-homogeneous operation, fails this check and is refused), and measures the
chosen metrics at each ``c`` with ``sharpkit.measure`` on the same analysis set
with the same seed (so stochastic metrics use the same random draws at every
``c`` and differences are the measure's, not the noise's).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from sharpkit import (
    ConfigError,
    DataSplit,
    ProbeContext,
    ProbeResult,
    ProbeSpec,
    evaluate,
)
from sharpkit.builtin._spec import signature_options

__all__ = ["Rescale", "parse_c_grid", "parse_metric_options"]

_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def parse_c_grid(text: str) -> np.ndarray:
    """Parse the ``c`` grid: ``"a,b,c"`` or ``"start:stop:num"`` (geometric).

    ``c = 1`` (the model as trained, the reference) is added when missing.

    Raises:
        ConfigError: A malformed grid or a value that is not positive.

    Examples:
        >>> parse_c_grid("0.1:10:3").tolist()
        [0.1, 1.0, 10.0]
        >>> parse_c_grid("2,5").tolist()
        [1.0, 2.0, 5.0]
    """
    raw = str(text).strip()
    try:
        if ":" in raw:
            start, stop, num = raw.split(":")
            values = np.geomspace(float(start), float(stop), int(num))
        else:
            values = np.array([float(v) for v in raw.split(",") if v.strip()])
    except ValueError:
        msg = (
            f"option 'c' must be comma-separated values (e.g. '0.1,1,10') or "
            f"'start:stop:num' spaced geometrically (e.g. '0.1:10:5'), got {text!r}"
        )
        raise ConfigError(msg) from None
    if values.size == 0 or not np.all(np.isfinite(values) & (values > 0)):
        msg = f"option 'c' needs positive, finite values, got {text!r}"
        raise ConfigError(msg)
    values[np.abs(values - 1.0) < 1e-9] = 1.0
    return np.unique(np.append(values, 1.0))


def parse_metric_options(text: str) -> dict[str, dict[str, str]]:
    """Parse ``"metric.option=value,..."`` into ``{metric: {option: value}}``.

    Raises:
        ConfigError: An item that is not ``metric.option=value``.

    Examples:
        >>> parse_metric_options("adaptive.kind=average, adaptive.samples=32")
        {'adaptive': {'kind': 'average', 'samples': '32'}}
    """
    out: dict[str, dict[str, str]] = {}
    for item in (i.strip() for i in str(text).split(",")):
        if not item:
            continue
        key, eq, value = item.partition("=")
        metric, dot, option = key.strip().rpartition(".")
        if not (eq and dot and metric and option):
            msg = (
                f"metric option {item!r} must look like metric.option=value, "
                "e.g. adaptive.kind=average"
            )
            raise ConfigError(msg)
        out.setdefault(metric, {})[option.strip()] = value.strip()
    return out


@dataclass(kw_only=True, eq=False)
class Rescale:
    """Metrics of ``θ_c``: layer ``a`` times ``c`` and layer ``b`` times ``1/c``.

    Args:
        layers: The pair ``"a,b"`` of module names (``"fc1,fc2"``); empty: the
            first two linear or convolutional layers.
        c: Grid of ``c``: ``"0.1,1,10"`` or ``"start:stop:num"`` (geometric);
            1 is always included.
        metrics: Comma-separated metric names.
        metric_options: ``"metric.option=value,..."``.
        samples: Training examples in the analysis set (the first ones).
        function_rtol: Largest output change allowed, relative to the largest
            output, before the rescaling is refused as not function-preserving.

    Raises:
        ConfigError: A bad grid, no metric, a bad option or sample count.
    """

    name: ClassVar[str] = "rescale"

    layers: str = ""
    c: str = "0.1,0.3,1,3,10"
    metrics: str = "spectral,frobenius,adaptive"
    metric_options: str = ""
    samples: int = 2048
    function_rtol: float = 1e-4
    _grid: np.ndarray = field(init=False, repr=False)
    _metrics: list[str] = field(init=False, repr=False)
    _options: dict[str, dict[str, str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._grid = parse_c_grid(self.c)
        self._metrics = [m.strip() for m in str(self.metrics).split(",") if m.strip()]
        if not self._metrics:
            msg = "option 'metrics' names no metric; e.g. metrics=spectral,adaptive"
            raise ConfigError(msg)
        self._options = parse_metric_options(self.metric_options)
        stray = sorted(set(self._options) - set(self._metrics))
        if stray:
            msg = (
                f"metric_options name {stray[0]!r}, which is not in metrics "
                f"({', '.join(self._metrics)}); add it or drop its options"
            )
            raise ConfigError(msg)
        if self.samples < 1:
            msg = f"samples must be >= 1, got {self.samples}"
            raise ConfigError(msg)
        if not self.function_rtol > 0:
            msg = f"function_rtol must be positive, got {self.function_rtol}"
            raise ConfigError(msg)

    @classmethod
    def spec(cls) -> ProbeSpec:
        """The probe's spec; the options and defaults are the fields'."""
        return ProbeSpec(
            name=cls.name,
            factory=cls,
            description="Metrics after multiplying one ReLU layer by c and the next "
            "by 1/c (same function; Dinh et al., 2017): which measures move?",
            options=signature_options(
                cls,
                {
                    "layers": "The two layers 'a,b' (module names); empty: the "
                    "first two linear/conv layers.",
                    "c": "Grid of c: 'a,b,...' or 'start:stop:num' (geometric); "
                    "1 is always added.",
                    "metrics": "Comma-separated metrics measured at every c.",
                    "metric_options": "Their options: 'metric.option=value,...'.",
                    "samples": "Training examples in the analysis set (the first).",
                    "function_rtol": "Largest relative output change accepted as "
                    "'the same function'.",
                },
            ),
        )

    def run(self, ctx: ProbeContext, /) -> ProbeResult:
        """Rescale, check the function, measure; one grid point per ``c``."""
        import sharpkit

        start = time.perf_counter()
        if len(ctx.models) != 1:
            msg = f"probe 'rescale' takes 1 model, got {len(ctx.models)}"
            raise ConfigError(msg)
        work = copy.deepcopy(ctx.models[0]).eval()
        names = self._pair(work)
        first, second = (_layer(work, n) for n in names)
        original = copy.deepcopy(work.state_dict())
        data = ctx.train_data.head(self.samples)
        reference = _outputs(work, data, ctx)
        scale = float(reference.abs().max()) or 1.0
        values: dict[str, list[float]] = {}
        extra: dict[str, list[float]] = {
            "train_loss": [],
            "output_change": [],
            "parameter_norm": [],
        }
        for k, c in enumerate(self._grid):
            work.load_state_dict(original)
            _rescale(first, second, float(c))
            change = float((_outputs(work, data, ctx) - reference).abs().max()) / scale
            if change > self.function_rtol:
                msg = (
                    f"rescaling {names[0]} by {c:g} and {names[1]} by 1/{c:g} changes "
                    f"the function (relative output change {change:.2g}); choose two "
                    "consecutive layers with only a ReLU between them (no batch norm)"
                )
                raise ConfigError(msg)
            m = sharpkit.measure(
                work,
                data,
                metrics=self._metrics,
                options=self._options,
                seed=ctx.seed,
                batch_size=ctx.batch_size,
                device=ctx.device,
            )
            for name, result in m.items():
                values.setdefault(name, []).append(result.value)
                for kind, err in (("stderr", result.stderr), ("bound", result.bound)):
                    values.setdefault(f"{name}_{kind}", []).append(
                        math.nan if err is None else err
                    )
            loss, _ = evaluate(
                work, data, ctx.loss_fn, batch_size=ctx.batch_size, device=ctx.device
            )
            extra["train_loss"].append(loss)
            extra["output_change"].append(change)
            extra["parameter_norm"].append(_norm(work))
            ctx.progress(k + 1, len(self._grid), description=f"c={c:g}")
        # An error array only where the metric gives one (spectral: a bound, no stderr).
        arrays = {
            k: np.asarray(v, dtype=np.float64)
            for k, v in values.items()
            if not (k.endswith(("_stderr", "_bound")) and all(map(math.isnan, v)))
        }
        arrays.update({k: np.asarray(v, dtype=np.float64) for k, v in extra.items()})
        return ProbeResult(
            coords={"c": self._grid.copy()},
            arrays=arrays,
            summary=self._summary(arrays),
            attrs={
                "layers": list(names),
                "c": ",".join(f"{c:g}" for c in self._grid),
                "metrics": list(self._metrics),
                "metric_options": {k: dict(v) for k, v in self._options.items()},
                "samples": len(data),
                "function_rtol": self.function_rtol,
                "transform": "θ_a ← c·θ_a (weight and bias), W_b ← W_b / c",
            },
            seconds=time.perf_counter() - start,
            probe=self.name,
        )

    def _pair(self, model: torch.nn.Module) -> tuple[str, str]:
        """The two layers' module names (given, or the first two found)."""
        found = [n for n, m in model.named_modules() if isinstance(m, _LAYERS)]
        if not self.layers.strip():
            if len(found) < 2:
                msg = (
                    "the model has fewer than two linear/conv layers to rescale; "
                    "pass layers=a,b with two module names"
                )
                raise ConfigError(msg)
            return found[0], found[1]
        pair = [n.strip() for n in self.layers.split(",")]
        if len(pair) != 2 or pair[0] == pair[1]:
            msg = f"layers must name two different modules 'a,b', got {self.layers!r}"
            raise ConfigError(msg)
        for n in pair:
            if n not in found:
                msg = (
                    f"no linear/conv layer named {n!r}; the model has "
                    f"{', '.join(found) or 'none'}"
                )
                raise ConfigError(msg)
        return pair[0], pair[1]

    def _summary(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        """Each metric's spread (max/min over the grid) and the worst output change."""
        summary = {"max_output_change": float(arrays["output_change"].max())}
        at_one = int(np.argmin(np.abs(self._grid - 1.0)))
        for name in self._metrics:
            v = arrays[name]
            summary[f"{name}_at_1"] = float(v[at_one])
            if np.all(v > 0):
                summary[f"{name}_spread"] = float(v.max() / v.min())
        return summary


_Layer = torch.nn.Linear | torch.nn.Conv1d | torch.nn.Conv2d | torch.nn.Conv3d


def _layer(model: torch.nn.Module, name: str) -> _Layer:
    layer = model.get_submodule(name)
    assert isinstance(layer, _LAYERS)  # _pair chose it among these
    return layer


def _rescale(first: _Layer, second: _Layer, c: float) -> None:
    """``first`` (weight and bias) times ``c``; ``second``'s weight times ``1/c``."""
    with torch.no_grad():
        first.weight.mul_(c)
        if first.bias is not None:
            first.bias.mul_(c)
        second.weight.div_(c)


def _outputs(
    model: torch.nn.Module, data: DataSplit, ctx: ProbeContext
) -> torch.Tensor:
    """The model's outputs on ``data``, concatenated, in float64."""
    with torch.no_grad():
        return torch.cat(
            [
                model(x).double()
                for x, _ in data.batches(ctx.batch_size, device=ctx.device)
            ]
        )


def _norm(model: torch.nn.Module) -> float:
    with torch.no_grad():
        return math.sqrt(
            sum(float((p.double() ** 2).sum()) for p in model.parameters())
        )
