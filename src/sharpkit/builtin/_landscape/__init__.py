"""Built-in loss-landscape probes: interpolate, direction, plane, plane-between.

* ``interpolate`` evaluates loss and accuracy along the line
  ``(1-α)·θ1 + α·θ2`` between two trained models (Goodfellow, Vinyals & Saxe,
  2015, ICLR, "Qualitatively characterizing neural network optimization
  problems"), the probe behind Figs. 2 and 3 of Jastrzębski et al. (2017,
  "Finding flatter minima with SGD").
* ``direction`` evaluates the loss along ``θ + α·d`` for a random
  filter-normalised direction ``d`` (Li, Xu, Taylor, Studer & Goldstein, 2018,
  NeurIPS, "Visualizing the loss landscape of neural nets").
* ``plane`` evaluates a 2-D grid ``θ + x·d1 + y·d2`` spanned by two such
  directions; ``plane-between`` the grid ``θ1 + x·(θ2-θ1) + y·v`` through two
  minima, with ``v`` a random filter-normalised direction made orthogonal to
  ``θ2-θ1`` and scaled to its length (as in Garipov et al., 2018, NeurIPS).

Batch-norm running statistics are re-estimated at every grid point where the
probe's ``bn_reestimate`` option is on (the default for the two-model probes;
:mod:`~sharpkit.builtin._landscape.evaluation`). Without re-estimation the
two-model probes interpolate the floating-point buffers like the parameters (a
running variance that would turn negative outside ``[0, 1]`` is clamped at
zero), and the one-model probes keep the buffers of ``θ``.

Width readouts turn a curve into numbers: basin widths around each minimum and,
for ``interpolate``, the loss barrier
(:mod:`~sharpkit.builtin._landscape.readouts`). Large grids are resumable with
the ``resume_dir`` option (:mod:`~sharpkit.builtin._landscape.grid`).

The package is private; one module a job:

* :mod:`~sharpkit.builtin._landscape.geometry`: parameter-space points and
  directions, buffer interpolation, state digests;
* :mod:`~sharpkit.builtin._landscape.evaluation`: the evaluation at one point,
  with batch-norm re-estimation, on seeded subsets;
* :mod:`~sharpkit.builtin._landscape.grid`: grid options, the resumable sweep;
* :mod:`~sharpkit.builtin._landscape.readouts`: basin edges and widths;
* :mod:`~sharpkit.builtin._landscape.probes`: the probes and their specs.

The plugin itself is :mod:`sharpkit.builtin.probes`, which imports this package
(and torch) only when the probe table is first needed.
"""
