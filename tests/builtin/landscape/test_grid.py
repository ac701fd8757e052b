"""Grid options and the resumable sweep (partial grids saved and resumed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from landscape_cases import bn_mlp, classification_data, context

from sharpkit.builtin._landscape.grid import parse_grid
from sharpkit.builtin._landscape.probes import Interpolate, Plane
from sharpkit.errors import ConfigError


def test_parse_grid_forms() -> None:
    g = parse_grid("-1:2:31")
    assert g.shape == (31,)
    assert g[0] == -1.0
    assert g[-1] == 2.0
    assert (g == 0.0).sum() == 1
    assert (g == 1.0).sum() == 1
    np.testing.assert_array_equal(parse_grid("0, 0.5,1"), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(parse_grid("0.3:0.3:1"), [0.3])
    # linspace(-0.7, 1.3, 21) passes within rounding of 0 and 1: snapped exactly.
    g = parse_grid("-0.7:1.3:21")
    assert 0.0 in g
    assert 1.0 in g


@pytest.mark.parametrize(
    "text", ["", "a:b:c", "0:1", "0:1:0", "1,0", "0,0", "0,nan", "0:1:2:3", "0:inf:3"]
)
def test_parse_grid_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="option 'alpha'"):
        parse_grid(text)


class Stop(Exception):
    pass


def test_plane_resumes_point_by_point(tmp_path: Path) -> None:
    model = bn_mlp(9)
    train = classification_data(20, 0)
    probe_kw = {
        "x": "-1:1:3",
        "y": "-1:1:3",
        "resume_dir": str(tmp_path),
        "test": False,
    }
    full = Plane(x="-1:1:3", y="-1:1:3", test=False).run(
        context([model], train, seed=5)
    )

    def stop_after(k: int) -> Any:
        def progress(done: float, total: float | None = None, /, **info: Any) -> None:
            if done >= k:
                raise Stop

        return progress

    with pytest.raises(Stop):
        Plane(**probe_kw).run(context([model], train, seed=5, progress=stop_after(4)))
    files = list(tmp_path.glob("plane-*.npz"))
    assert len(files) == 1
    # A different seed (other directions) must not pick up this partial grid.
    with pytest.raises(Stop):
        Plane(**probe_kw).run(context([model], train, seed=6, progress=stop_after(1)))
    assert len(list(tmp_path.glob("plane-*.npz"))) == 2
    done_points: list[float] = []

    def record(done: float, total: float | None = None, /, **info: Any) -> None:
        done_points.append(done)

    resumed = Plane(**probe_kw).run(context([model], train, seed=5, progress=record))
    assert resumed.attrs["resumed_points"] == 4
    assert done_points[0] == 4  # starts where it stopped
    np.testing.assert_array_equal(
        resumed.arrays["train_loss"], full.arrays["train_loss"]
    )
    np.testing.assert_array_equal(
        resumed.arrays["train_accuracy"], full.arrays["train_accuracy"]
    )
    assert len(list(tmp_path.glob("plane-*.npz"))) == 1  # the finished one is removed


def test_interpolate_resume_dir_also_works(tmp_path: Path) -> None:
    m1, m2 = bn_mlp(1), bn_mlp(2)
    train = classification_data(20, 0)

    def stop(done: float, total: float | None = None, /, **info: Any) -> None:
        if done >= 2:
            raise Stop

    with pytest.raises(Stop):
        Interpolate(alpha="-1:2:5", resume_dir=str(tmp_path)).run(
            context([m1, m2], train, progress=stop)
        )
    out = Interpolate(alpha="-1:2:5", resume_dir=str(tmp_path)).run(
        context([m1, m2], train)
    )
    ref = Interpolate(alpha="-1:2:5").run(context([m1, m2], train))
    assert out.attrs["resumed_points"] == 2
    np.testing.assert_array_equal(out.arrays["train_loss"], ref.arrays["train_loss"])
    assert not list(tmp_path.glob("*.npz"))
