"""Built-in options come from their factory's signature."""

from __future__ import annotations

import pytest

from sharpkit.builtin._spec import check_choice, signature_options
from sharpkit.errors import ConfigError
from sharpkit.registry import get_registry


class Factory:
    def __init__(self, *, k: int = 3, sigma: float | None = None, how: str = "a"):
        self.k, self.sigma, self.how = k, sigma, how


def test_names_types_and_defaults_come_from_the_signature() -> None:
    opts = signature_options(
        Factory,
        {"k": "how many", "sigma": "width", "how": "which"},
        choices={"how": ("a", "b")},
    )
    assert [(o.name, o.type, o.default, o.choices) for o in opts] == [
        ("k", int, 3, None),
        ("sigma", float, None, None),
        ("how", str, "a", ("a", "b")),
    ]


def test_a_parameter_without_help_or_an_unknown_help_is_an_error() -> None:
    with pytest.raises(TypeError, match=r"Factory\(how\) needs a help line"):
        signature_options(Factory, {"k": "x", "sigma": "y"})
    with pytest.raises(TypeError, match="unknown parameters"):
        signature_options(Factory, {"k": "x", "sigma": "y", "how": "z", "nope": ""})

    def bad(*, x: list[int] | None = None) -> None: ...

    with pytest.raises(TypeError, match="must be annotated int, float, str or bool"):
        signature_options(bad, {"x": "y"})


def test_check_choice() -> None:
    check_choice("how", "a", ("a", "b"))
    with pytest.raises(ConfigError, match="how must be one of 'a', 'b', got 'c'"):
        check_choice("how", "c", ("a", "b"))


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in get_registry().names("metric")
        if get_registry().provider("metric", n).distribution == "sharpkit"
    ],
)
def test_every_builtin_metric_documents_the_defaults_that_apply(name: str) -> None:
    import inspect

    spec = get_registry().get("metric", name)
    params = inspect.signature(spec.factory).parameters
    assert [o.name for o in spec.options] == list(params)
    for opt in spec.options:
        assert opt.default == params[opt.name].default, opt.name
