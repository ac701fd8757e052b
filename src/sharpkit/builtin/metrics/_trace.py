"""``trace``: tr H, exact where the Gauss-Newton identity holds, else estimated.

tr H exactly for networks that are piecewise multilinear in their parameters
(ReLU, linear/convolution layers, batch norm in eval mode: then tr H = tr G,
see :mod:`sharpkit.curvature.ggn`), else by Hutch++ (Meyer, Musco, Musco &
Woodruff, 2021, SOSA) deflated by the shared Lanczos basis (Chen & Hallman,
2023, SIAM J. Matrix Anal. Appl.), or plain Hutchinson (1990).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from sharpkit import AnalysisContext, ConfigError, MetricResult
from sharpkit.builtin._spec import check_choice
from sharpkit.builtin.metrics._common import (
    EXACT_MAX,
    Run,
    check_basis,
    check_probes,
    exact_up_front,
    path_attrs,
    positive,
    raise_budget,
    warn,
)

if TYPE_CHECKING:
    from sharpkit import Deflation, Estimate

__all__ = ["GGN_AUTO_MAX_CLASSES", "Trace"]

#: ``method="auto"`` takes the exact trace up to this many classes (times
#: positions, for per-position logits): it costs one backward pass per class
#: (plus one), Hutch++ to 1 % about 100 products of 1.6–2.3 gradients each.
GGN_AUTO_MAX_CLASSES = 100

#: Probes of the estimated trace with ``data_error`` (``probes`` overrides).
DATA_PROBES = 32


class Trace:
    """tr H: exact where the Gauss-Newton identity holds, else Hutch++ or Hutchinson.

    Args:
        method: ``"auto"`` (exact-ggn where it applies and the model has at
            most ``GGN_AUTO_MAX_CLASSES`` = 100 classes, else hutch++),
            ``"exact-ggn"`` (an error where it does not apply), ``"hutch++"`` or
            ``"hutchinson"``.
        rel_stderr: Stop once the standard error is at most this fraction of the
            value. The remainder after deflation has many mid-size eigenvalues
            (≈ 10 % relative spread per probe on a BN-MLP), so a tighter target
            costs many probes: 1 % needs about 100.
        sketch: Dimension of the deflated subspace for Hutch++.
        sketch_method: ``"lanczos"`` (Krylov basis, one product per dimension;
            extends the ``spectral`` run's process when there is one) or
            ``"random"`` (Meyer et al.'s ``orth(H S)``, two per dimension).
        probes: Use exactly this many probes instead of ``rel_stderr``.
        exact_max: Compute exactly (``n`` Lanczos steps) up to this many
            parameters. Above it the estimate never spends more than ``n``
            products either: where independent probes would need ``n`` or
            more, its orthogonal probes go on to the exact value (the result's
            ``path`` and ``path_reason`` attributes say which happened).
        data_error: On the exact-ggn path, also give ``data_stderr``: the
            exact trace of each of 16 chunks of the data
            (:func:`~sharpkit.exact_trace_estimate`: the per-example terms of
            the one exact pass summed per chunk, no extra cost) and their
            spread (``data_method="jackknife-linear"``). On the estimated
            paths, the estimate runs on
            :meth:`~sharpkit.AnalysisContext.chunked_hessian` instead:
            deflated by a Krylov basis of ``sketch`` steps of its own
            (``hutch++``; none for ``hutchinson``), exact chunk by chunk, plus
            ``probes`` shared Rademacher probes (32 by default), and
            :func:`~sharpkit.trace_estimate` gives the chunks' spread.
    """

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "method": ("auto", "exact-ggn", "hutch++", "hutchinson"),
        "sketch_method": ("lanczos", "random"),
    }

    def __init__(
        self,
        method: str = "auto",
        rel_stderr: float = 0.01,
        sketch: int = 40,
        sketch_method: str = "lanczos",
        probes: int | None = None,
        exact_max: int = EXACT_MAX,
        data_error: bool = False,
    ) -> None:
        positive("rel_stderr", rel_stderr)
        if sketch < 1:
            msg = f"sketch must be >= 1, got {sketch}"
            raise ConfigError(msg)
        check_probes(probes)
        check_choice("method", method, self.CHOICES["method"])
        check_choice("sketch_method", sketch_method, self.CHOICES["sketch_method"])
        self.method = method
        self.rel_stderr = rel_stderr
        self.sketch = sketch
        self.sketch_method = sketch_method
        self.probes = probes
        self.exact_max = exact_max
        self.data_error = bool(data_error)

    def _fewest(self) -> int:
        """The fewest products the chosen estimator spends."""
        from sharpkit.builtin.metrics._engine import DEFAULT_MIN_PROBES

        probes = self.probes or DEFAULT_MIN_PROBES
        if self.method == "hutchinson":
            return probes
        return self.sketch * (2 if self.sketch_method == "random" else 1) + probes

    def _ggn_fallback(self, ctx: AnalysisContext) -> str | None:
        """Why the exact-GGN path is not taken (None: it is), for auto/exact-ggn."""
        if self.method == "exact-ggn":
            return ggn_obstacle(ctx)
        return ggn_auto_obstacle(ctx)

    def estimated_hvps(self, ctx: AnalysisContext) -> int | None:
        """Sketch plus about sixty probes, at most ``n``."""
        H = ctx.hessian
        if exact_up_front(ctx, self.exact_max, self._fewest()):
            guess = H.n
        elif self.method in ("auto", "exact-ggn") and self._ggn_fallback(ctx) is None:
            guess = 6  # one backward pass per class: a few products' worth
        elif self.method == "hutchinson":
            guess = self.probes or 150
        else:
            size = self.sketch * (2 if self.sketch_method == "random" else 1)
            guess = min(H.n, size + (self.probes or 60))
        return guess if ctx.max_hvps is None else min(guess, ctx.max_hvps)

    def compute(self, ctx: AnalysisContext) -> MetricResult:
        """Estimate tr H on ``ctx.hessian``."""
        run = Run(ctx, "trace")
        H = run.H
        up_front = exact_up_front(ctx, self.exact_max, self._fewest())
        if self.method in ("auto", "hutch++") or up_front:
            check_basis(
                ctx, f"trace (sketch {self.sketch})",
                H.n if up_front else self.sketch, H.n, "lower trace's sketch option",
            )  # fmt: skip
        if up_front:
            if self.data_error:  # a chunked basis of the whole space
                return self._with_data(run, None, steps=H.n)
            return self._exact(run, up_front)
        fallback = None
        if self.method in ("auto", "exact-ggn"):
            fallback = self._ggn_fallback(ctx)
            if fallback is None:
                return self._ggn(run)
            if self.method == "exact-ggn":
                msg = (
                    f"trace method 'exact-ggn' does not apply: {fallback}; "
                    "set trace's method option to 'hutch++'"
                )
                raise ConfigError(msg)
        if self.data_error:
            return self._with_data(run, fallback)
        est = self._estimate(run)
        return self._estimate_result(run, est, fallback)

    def _with_data(
        self, run: Run, fallback: str | None, steps: int | None = None
    ) -> MetricResult:
        """The estimated trace and its data standard error on the chunked Hessian."""
        from sharpkit import trace_estimate
        from sharpkit.builtin.metrics._data_error import (
            chunked_krylov,
            chunked_result,
        )

        ctx = run.ctx
        if steps is None:
            steps = 0 if self.method == "hutchinson" else self.sketch
        if ctx.max_hvps is not None:
            steps = min(steps, max(ctx.max_hvps // 2, 1))
        chunked, rec = chunked_krylov(ctx, steps, run.gen, gram=False)
        probes = self.probes or DATA_PROBES
        est = trace_estimate(chunked, recorder=rec, probes=probes, generator=run.gen)
        return chunked_result(
            run,
            est,
            meaning="standard error of tr H over the data the samples were drawn "
            "from (the chunks' spread, delete-a-chunk jackknife, widened for K-1 "
            "degrees of freedom; it includes each chunk's probe noise, so it errs "
            "high)",
            chunked=chunked,
            rec=rec,
            probes=probes,
            rel_stderr=self.rel_stderr,
            array="chunk_values",
            extra={"exact_ggn_not_applicable": fallback} if fallback else None,
        )

    def _estimate(self, run: Run) -> Estimate:
        """Hutch++ (deflated by the shared Krylov basis or a sketch) or Hutchinson."""
        from sharpkit import hutchinson_trace, hutchpp_trace

        ctx, H = run.ctx, run.H
        target = None if self.probes else self.rel_stderr
        if self.method not in ("auto", "hutch++"):
            return hutchinson_trace(
                H,
                H.n,
                probes=self.probes,
                max_matvecs=ctx.max_hvps,
                target_rel_stderr=target,
                generator=run.gen,
                distribution="auto",
                progress=run.progress(),
            )
        deflation: Deflation | None = None
        size = self.sketch
        if self.sketch_method == "lanczos":
            if ctx.max_hvps is not None:
                size = min(size, max(ctx.max_hvps // 2, 1))
            deflation = ctx.krylov(size, generator=run.gen)
        elif ctx.max_hvps is not None:
            size = max(1, min(size, ctx.max_hvps // 3))
        used = run.hvps
        return hutchpp_trace(
            H,
            H.n,
            sketch=self.sketch_method,
            sketch_size=size,
            deflation=deflation,
            probes=self.probes,
            max_matvecs=run.left(),
            target_rel_stderr=target,
            generator=run.gen,
            distribution="auto",
            progress=run.progress(used),
        )

    def _estimate_result(
        self, run: Run, est: Estimate, fallback: str | None
    ) -> MetricResult:
        hvps = run.hvps
        target = None if self.probes else self.rel_stderr
        if not est.converged:
            warn(
                "trace",
                f"relative stderr {est.stderr / max(abs(est.value), 1e-300):.2g} > "
                f"{self.rel_stderr:g}",
                hvps,
                raise_budget(),
                stacklevel=4,
            )
        return run.result(
            value=est.value,
            stderr=est.stderr,
            converged=est.converged,
            hvps=hvps,
            arrays={"samples": est.samples},
            attrs={
                "method": est.method,
                "deflation_rank": est.deflation_rank,
                "exact_part": est.exact_part,
                "probes": len(est.samples),
                "rel_stderr_target": self.rel_stderr,
                "hvp_method": run.H.method,
                **path_attrs(est, run.H.n, target, hvps),
                **({"exact_ggn_not_applicable": fallback} if fallback else {}),
            },
        )

    def _ggn(self, run: Run) -> MetricResult:
        from sharpkit.builtin.metrics._engine import cross_entropy_form, ggn_trace

        ctx = run.ctx
        n = len(ctx.data)
        form, _ = cross_entropy_form(ctx.loss_fn)
        assert form is not None  # ggn_obstacle checked it
        data: dict[str, Any] = {}
        if self.data_error:
            from sharpkit import exact_trace_estimate

            est = exact_trace_estimate(
                ctx.model, ctx.data, loss=form, batch_size=ctx.batch_size
            )
            value = est.value
            data = {"data_stderr": est.stderr, "data_method": est.method}
        else:
            value, _ = ggn_trace(
                ctx.model,
                ctx.data,
                batch_size=ctx.batch_size,
                progress=lambda done: ctx.progress(done, n),
                loss=form,
            )
        return run.result(
            **data,
            value=value,
            stderr=0.0,
            converged=True,
            hvps=0,
            attrs={
                "method": "exact-ggn",
                "note": "tr H = tr G exactly: the network is piecewise multilinear "
                "in its parameters and the loss is cross-entropy",
                "cross_entropy": form.describe(),
                "rel_stderr_target": self.rel_stderr,
            },
        )

    def _exact(self, run: Run, why: str) -> MetricResult:
        deflation = run.ctx.krylov(run.H.n, generator=run.gen)
        return run.result(
            value=deflation.trace,
            stderr=0.0,
            converged=True,
            arrays={"samples": np.zeros(0)},
            attrs={
                "method": "exact",
                "deflation_rank": deflation.rank,
                "exact_part": deflation.trace,
                "probes": 0,
                "rel_stderr_target": self.rel_stderr,
                "hvp_method": run.H.method,
                "path": "exact",
                "path_reason": why,
            },
        )


def ggn_obstacle(ctx: AnalysisContext) -> str | None:
    """Why the exact Gauss-Newton trace does not apply to ``ctx`` (None: it does).

    Checks everything the identity tr H = tr G and ``ggn_trace`` need:
    batch norm with running statistics, a cross-entropy loss whose every option
    is accounted for, supported layers, a network piecewise multilinear in its
    parameters (walking the autograd graph of a forward pass on two examples),
    and targets that fit the logits. Caches the reason and the logits' shape
    (under ``trace:`` keys of ``ctx.cache``, this plugin's own memo).
    """
    key = "trace:ggn_obstacle"
    if key not in ctx.cache:
        from sharpkit.builtin.metrics._engine import cross_entropy_form

        why: str | None = None
        form, reason = cross_entropy_form(ctx.loss_fn)
        if ctx.bn_mode != "eval":
            why = "batch norm uses batch statistics (bn_mode='train')"
        elif form is None:
            why = reason
        else:
            why = _ggn_model_obstacle(ctx)
        ctx.cache[key] = why
    return ctx.cache[key]  # type: ignore[no-any-return]


def _ggn_model_obstacle(ctx: AnalysisContext) -> str | None:
    """The model and target checks of :func:`ggn_obstacle`."""
    import torch

    from sharpkit.builtin.metrics._engine import (
        logits_obstacle,
        multilinear_check,
        supported_layers,
    )

    ok, reason = supported_layers(ctx.model)
    if not ok:
        return reason
    example = ctx.data.inputs[:2]
    try:
        ok, reason = multilinear_check(ctx.model, example)
        with torch.no_grad():
            out = ctx.model(example)
    except (RuntimeError, ValueError, TypeError) as exc:
        # e.g. a layer that needs more examples: let the estimator decide
        return f"a forward pass on two examples failed ({type(exc).__name__})"
    if not ok:
        return reason
    if not isinstance(out, torch.Tensor):
        return f"the model returns {type(out).__name__}, not a logits tensor"
    ctx.cache["trace:logits_shape"] = tuple(out.shape)
    return logits_obstacle(out.shape, ctx.data.targets[:2]) or None


def ggn_auto_obstacle(ctx: AnalysisContext) -> str | None:
    """Why ``method="auto"`` does not take the exact trace (None: it does)."""
    why = ggn_obstacle(ctx)
    if why is not None:
        return why
    shape = ctx.cache["trace:logits_shape"]
    classes, positions = int(shape[1]), math.prod(int(d) for d in shape[2:])
    if classes * positions > GGN_AUTO_MAX_CLASSES:
        where = f" at {positions} positions" if positions > 1 else ""
        passes = positions * (classes + 1)
        return (
            f"{classes} classes{where}: the exact path needs {passes} backward "
            "passes per batch, more than Hutch++ to 1 %; force it with "
            "method=exact-ggn"
        )
    return None
