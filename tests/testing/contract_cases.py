"""Run a conformance suite over every built-in component of one kind.

``contract_classes`` makes one ``Test<Case>`` subclass of a contract per case and
checks that the cases cover every component sharpkit itself registers, so a new
built-in cannot ship without running its contract. A case may mark single
contract tests ``xfail(strict=True)`` with the reason: a known bug, reported, not
hidden.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from sharpkit.registry import get_registry


@dataclass(frozen=True)
class Case:
    """One contract run: a built-in spec plus the class attributes to set."""

    spec: str
    attrs: Mapping[str, Any] = field(default_factory=dict)
    xfail: Mapping[str, str] = field(default_factory=dict)  # test name -> reason
    marks: tuple[Any, ...] = ()


def builtin_names(kind: str) -> list[str]:
    reg = get_registry()
    return [
        n for n in reg.names(kind) if reg.provider(kind, n).distribution == "sharpkit"
    ]


def _xfailed(base: type, name: str, reason: str) -> Callable[..., None]:
    method = getattr(base, name)

    @pytest.mark.xfail(strict=True, reason=reason)
    def test(self: Any) -> None:
        method(self)

    test.__name__ = name
    test.__doc__ = method.__doc__
    return test


def contract_classes(
    base: type, kind: str, cases: Mapping[str, Case], module: str
) -> dict[str, type]:
    """Return ``{class name: contract subclass}`` for ``cases`` (id -> Case).

    ``module`` is the test module's ``__name__`` (so pytest reports the classes
    as its own).
    """
    missing = set(builtin_names(kind)) - {c.spec for c in cases.values()}
    assert not missing, f"built-in {kind}s without a contract case: {missing}"
    reg = get_registry()
    out: dict[str, type] = {}
    for case_id, case in cases.items():
        name = "Test" + "".join(
            p.capitalize() for p in case_id.replace("-", "_").split("_")
        )
        body: dict[str, Any] = {
            "__module__": module,
            "spec": reg.specs(kind)[case.spec],
            **case.attrs,
        }
        for test, reason in case.xfail.items():
            body[test] = _xfailed(base, test, reason)
        if case.marks:
            body["pytestmark"] = list(case.marks)
        out[name] = type(name, (base,), body)
    return out
