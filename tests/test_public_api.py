"""The public API has an edge: ``sharpkit.__all__``, documented, on one page."""

from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import sharpkit

ROOT = Path(__file__).resolve().parents[1]


def _load_generator():  # docs/gen_api.py is a script, not a package module
    spec = importlib.util.spec_from_file_location("gen_api", ROOT / "docs/gen_api.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", [n for n in sharpkit.__all__ if n != "__version__"])
def test_every_public_name_resolves_and_has_its_own_docstring(name: str) -> None:
    obj = getattr(sharpkit, name)
    doc = inspect.getdoc(obj) if not isinstance(obj, str) else None
    assert doc, f"sharpkit.{name} has no docstring"
    if inspect.isclass(obj):
        # an exception class that only inherits Exception's docstring is undocumented
        assert vars(obj).get("__doc__"), name


def test_the_reference_page_lists_exactly_the_public_api() -> None:
    gen = _load_generator()
    listed = [n for _, names in gen.groups() for n in names]
    assert sorted(listed) == sorted(n for n in sharpkit.__all__ if n != "__version__")
    assert len(listed) == len(set(listed))
    committed = (ROOT / "docs/reference/api.md").read_text()
    assert committed == gen.render(), "docs/reference/api.md drifted; `make docs-api`"


def test_import_sharpkit_does_not_import_torch() -> None:
    """Heavy parts load on first use, so `sharpkit --version` stays fast."""
    code = "import sys, sharpkit; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_lazy_names_are_the_real_objects() -> None:
    from sharpkit.curvature import HessianOperator
    from sharpkit.store import ResultStore
    from sharpkit.sweep import run_sweep

    assert sharpkit.HessianOperator is HessianOperator
    assert sharpkit.ResultStore is ResultStore
    assert sharpkit.run_sweep is run_sweep
    assert set(dir(sharpkit)) >= set(sharpkit.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = sharpkit.nope  # type: ignore[attr-defined]
