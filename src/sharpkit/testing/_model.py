"""The conformance suite for model plugins: :class:`ModelContract`."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import sharpkit
from sharpkit.testing._checks import check_spec, create, expect, global_rng

if TYPE_CHECKING:
    import torch

__all__ = ["ModelContract"]


class ModelContract:
    """Base class of the model conformance tests; subclass it as ``Test<Name>``.

    Examples:
        ```python
        class TestMyNet(ModelContract):
            spec = MY_NET_SPEC
            options = {"width": 16}
            input_shape = (1, 28, 28)
            num_classes = 10
        ```

    The factory is called as sharpkit calls it,
    ``factory(input_shape=..., num_classes=..., **options)`` (plus
    ``variant=...`` for a prefix spec), under ``torch.manual_seed(seed)``.

    Attributes:
        spec: The model spec under test.
        options: Options passed to the factory (CLI strings or Python values).
        variant: For a prefix spec (``name:variant``), the variant to build.
        input_shape: Shape of one input.
        num_classes: Number of classes (logits).
        batch_size: Examples per test batch.
        seed_sensitive: Whether different seeds must give different initial
            weights (set ``False`` for a deterministic initialisation).
    """

    spec: ClassVar[sharpkit.ModelSpec]
    options: ClassVar[Mapping[str, Any]] = {}
    variant: ClassVar[str | None] = None
    input_shape: ClassVar[tuple[int, ...]] = (3, 32, 32)
    num_classes: ClassVar[int] = 10
    batch_size: ClassVar[int] = 4
    seed_sensitive: ClassVar[bool] = True

    def build(self, seed: int = 0) -> torch.nn.Module:
        """Call the factory as sharpkit does, with the global RNG seeded from ``seed``.

        The global RNG state is restored afterwards. The model is returned in
        eval mode.

        Args:
            seed: Seed of the initialisation.
        """
        context: dict[str, Any] = {
            "input_shape": tuple(self.input_shape),
            "num_classes": self.num_classes,
        }
        if self.spec.prefix:
            expect(
                self.variant is not None,
                f"{self.spec.name!r} is a prefix spec: set `variant` on the test class",
            )
            context["variant"] = self.variant
        with global_rng(seed):
            model = create(self.spec, self.options, **context)
        expect(
            _is_module(model),
            f"the factory returned {type(model).__name__}, not a torch.nn.Module",
        )
        model.eval()
        return model  # type: ignore[no-any-return]

    def make_inputs(self, seed: int = 0) -> torch.Tensor:
        """Return a batch of Gaussian inputs ``(batch_size, *input_shape)``.

        The tests cast it to the dtype of the model's parameters; override for a
        model that takes other inputs.

        Args:
            seed: Seed of the batch.
        """
        import torch

        gen = torch.Generator().manual_seed(seed)
        return torch.randn(self.batch_size, *self.input_shape, generator=gen)

    def make_targets(self, seed: int = 0) -> torch.Tensor:
        """Return ``batch_size`` class indices in ``[0, num_classes)``.

        Args:
            seed: Seed of the targets.
        """
        import torch

        gen = torch.Generator().manual_seed(seed + 1)
        return torch.randint(0, self.num_classes, (self.batch_size,), generator=gen)

    def _inputs_for(self, model: torch.nn.Module) -> torch.Tensor:
        x = self.make_inputs()
        dtype = _float_dtype(model)
        return x.to(dtype) if dtype is not None and x.is_floating_point() else x

    # ------------------------------------------------------------------ tests

    def test_spec_is_valid(self) -> None:
        """The spec passes :func:`check_spec`: the registry's rules and more."""
        check_spec(self.spec, "model")

    def test_factory_returns_module_with_parameters(self) -> None:
        """The factory returns an ``nn.Module`` with trainable floating parameters."""
        model = self.build()
        params = [p for p in model.parameters() if p.requires_grad]
        expect(params, "the model has no trainable parameters; sharpkit needs some")
        expect(
            all(p.is_floating_point() for p in params),
            "every trainable parameter must be a floating-point tensor",
        )

    def test_forward_gives_logits(self) -> None:
        """A batch gives finite ``(batch, num_classes)`` logits, eval and train mode."""
        import torch

        model = self.build()
        x = self._inputs_for(model)
        want = (self.batch_size, self.num_classes)
        for mode in ("eval", "train"):
            model.train(mode == "train")
            with torch.no_grad():
                out = model(x)
            expect(
                isinstance(out, torch.Tensor),
                f"{mode}-mode forward returned {type(out).__name__}, not a tensor",
            )
            expect(
                tuple(out.shape) == want,
                f"{mode}-mode forward gave shape {tuple(out.shape)}, expected {want}",
            )
            expect(out.is_floating_point(), f"{mode}-mode logits are not floating")
            expect(
                bool(torch.isfinite(out).all()), f"{mode}-mode logits are not finite"
            )

    def test_eval_forward_is_deterministic(self) -> None:
        """In eval mode (dropout off) the same batch gives the same logits twice."""
        import torch

        model = self.build()
        x = self._inputs_for(model)
        with torch.no_grad(), global_rng(101):
            a = model(x)
        with torch.no_grad(), global_rng(202):
            b = model(x)
        expect(
            torch.equal(a, b),
            "eval-mode forward is random; switch dropout and noise off in eval()",
        )

    def test_same_seed_same_weights(self) -> None:
        """Built under the same seed, two models have bit-identical state."""
        import torch

        a, b = self.build(seed=7).state_dict(), self.build(seed=7).state_dict()
        expect(list(a) == list(b), "two builds have different state_dict keys")
        for key, value in a.items():
            expect(
                torch.equal(value, b[key]),
                f"{key!r} differs between two builds under seed 7; initialise "
                "from torch's global RNG, which sharpkit seeds",
            )

    def test_different_seeds_different_weights(self) -> None:
        """Different seeds give different initial weights (if ``seed_sensitive``)."""
        import torch

        if not self.seed_sensitive:
            return
        a, b = self.build(seed=1), self.build(seed=2)
        same = all(
            torch.equal(p, q)
            for p, q in zip(a.parameters(), b.parameters(), strict=True)
        )
        expect(
            not same,
            "seeds 1 and 2 gave the same weights: the initialisation ignores the "
            "seed (set seed_sensitive = False if that is intended)",
        )

    def test_checkpoint_round_trip(self) -> None:
        """The state survives ``save_checkpoint``/``load_checkpoint`` (weights only).

        A model rebuilt under another seed and given the loaded state computes
        bit-identical logits.
        """
        import torch

        model = self.build(seed=3)
        x = self._inputs_for(model)
        with torch.no_grad():
            want = model(x)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.pt"
            meta = sharpkit.CheckpointMeta(
                model=self.spec.name, model_options=dict(self.options)
            )
            sharpkit.save_checkpoint(path, model, meta)
            ckpt = sharpkit.load_checkpoint(path)
        state = model.state_dict()
        expect(
            list(ckpt.state_dict) == list(state),
            "the checkpoint's keys differ from the model's state_dict",
        )
        rebuilt = self.build(seed=4)
        rebuilt.load_state_dict(ckpt.state_dict, strict=True)
        for key, value in rebuilt.state_dict().items():
            expect(torch.equal(value, state[key]), f"{key!r} did not round-trip")
        with torch.no_grad():
            got = rebuilt(x)
        expect(
            torch.equal(got, want),
            "a rebuilt model with the loaded state computes different logits; "
            "keep everything the forward pass needs in the state_dict",
        )

    def test_twice_differentiable(self) -> None:
        """Hessian-vector products work, so sharpkit can measure the model.

        Double backward through the eval-mode loss gives finite, non-zero,
        symmetric products: ``u·(Hv) = v·(Hu)``. The forward pass runs under
        :func:`sharpkit.analysis_mode`, as sharpkit's own products do (so
        ``scaled_dot_product_attention`` uses its twice-differentiable kernel).
        """
        import torch

        model = self.build()
        params = [p for p in model.parameters() if p.requires_grad]
        x, y = self._inputs_for(model), self.make_targets()
        try:
            with sharpkit.analysis_mode(model):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                grads: list[torch.Tensor | None] = list(
                    torch.autograd.grad(
                        loss, params, create_graph=True, allow_unused=True
                    )
                )
        except RuntimeError as exc:
            msg = f"backward through the model failed: {exc}"
            raise AssertionError(msg) from exc
        expect(
            any(g is not None and g.requires_grad for g in grads),
            "the gradient does not depend on the parameters: no second derivative",
        )
        gen = torch.Generator().manual_seed(0)
        u = [torch.randn(p.shape, generator=gen).to(p) for p in params]
        v = [torch.randn(p.shape, generator=gen).to(p) for p in params]

        def hvp(vec: list[torch.Tensor]) -> list[torch.Tensor]:
            dot = sum(
                (
                    (g * w).sum()
                    for g, w in zip(grads, vec, strict=True)
                    if g is not None
                ),
                torch.zeros((), dtype=loss.dtype),
            )
            out: list[torch.Tensor | None] = list(
                torch.autograd.grad(dot, params, retain_graph=True, allow_unused=True)
            )
            return [
                torch.zeros_like(p) if h is None else h
                for h, p in zip(out, params, strict=True)
            ]

        try:
            hv, hu = hvp(v), hvp(u)
        except RuntimeError as exc:
            msg = (
                f"double backward (a Hessian-vector product) failed: {exc}; "
                "sharpkit needs the second derivatives of the model"
            )
            raise AssertionError(msg) from exc
        norm_hv = math.sqrt(sum(float((h.double() ** 2).sum()) for h in hv))
        norm_hu = math.sqrt(sum(float((h.double() ** 2).sum()) for h in hu))
        expect(
            math.isfinite(norm_hv) and math.isfinite(norm_hu),
            "Hessian-vector product is not finite",
        )
        expect(norm_hv > 0 and norm_hu > 0, "Hessian-vector product is exactly zero")
        u_hv = sum(
            float((a.double() * b.double()).sum()) for a, b in zip(u, hv, strict=True)
        )
        v_hu = sum(
            float((a.double() * b.double()).sum()) for a, b in zip(v, hu, strict=True)
        )
        norm_u = math.sqrt(sum(float((a.double() ** 2).sum()) for a in u))
        norm_v = math.sqrt(sum(float((a.double() ** 2).sum()) for a in v))
        # Rounding in the model's dtype: ~1e-7 relative in float32, so 1e-3 of
        # the Cauchy-Schwarz scale leaves a wide margin; a wrong second
        # derivative is off by O(1).
        scale = max(norm_u * norm_hv, norm_v * norm_hu)
        tol = 1e-3 if params[0].dtype != torch.float64 else 1e-9
        expect(
            abs(u_hv - v_hu) <= tol * scale,
            f"the Hessian is not symmetric: u·Hv = {u_hv:.6g}, v·Hu = {v_hu:.6g}",
        )


def _is_module(obj: object) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


def _float_dtype(model: torch.nn.Module) -> torch.dtype | None:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None
