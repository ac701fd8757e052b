"""Parameter blocks: which entries of the flat parameter vector form each block.

A *block* is a group of parameters; the Hessian's diagonal block ``H_bb`` is the
curvature of the loss in those parameters with every other parameter fixed. A
:class:`BlockPartition` splits the parameters an operator differentiates into
disjoint blocks that cover them all, so that quantities such as the trace add
up: ``Σ_b tr H_bb = tr H``. The estimators over a partition live in
:mod:`sharpkit.curvature.block_estimates`.

Block specifications (:func:`resolve_blocks`):

* ``"layers"``: one block per module that owns parameters directly (a ``Linear``,
  a ``Conv2d``, a ``BatchNorm1d``...), named by its module path (``"0"``,
  ``"encoder.fc1"``); a weight tied between two modules belongs to the first
  module that owns it (``named_parameters`` order);
* ``"depth=N"``: one block per submodule at depth ``N`` of the module tree
  (the first ``N`` components of the parameter's module path), e.g. the three
  stages of a CIFAR ResNet at ``depth=1``; parameters of shallower modules form
  their own blocks, and parameters of the root module a block named ``"root"``;
* ``"NAME=REGEX"`` (one or several): named groups of the parameters whose names
  the regular expression matches (``re.search``); parameters no regex matches
  form one more block, ``"rest"``;
* a mapping ``name -> [parameter names or tensors]``, with the same ``"rest"``.

Parameters that do not require grad (frozen) are not part of the Hessian and of
no block; a named group that matches only frozen parameters is an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor, nn

from sharpkit.errors import ConfigError

__all__ = [
    "REST",
    "Block",
    "BlockPartition",
    "BlockSpec",
    "resolve_blocks",
    "select_block",
]

REST = "rest"
"""Name of the block of the parameters that no named group matches."""

BlockSpec = str | Sequence[str] | Mapping[str, Sequence[str | Tensor]]
"""``"layers"``, ``"depth=N"``, ``"NAME=REGEX"`` strings, or a name -> params map."""

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_USAGE = "blocks take 'layers', 'depth=N', 'NAME=REGEX' (repeatable) or a mapping"


@dataclass(frozen=True, eq=False)
class Block:
    """One block of parameters.

    Attributes:
        name: The block's name (a module path, a group name or ``"rest"``).
        params: Names of its parameters, in flat-vector order.
        index: Positions of its entries in the flat parameter vector (int64, CPU).
        members: Positions of its parameters in the list the vector is made of.
    """

    name: str
    params: tuple[str, ...]
    index: Tensor = field(repr=False)
    members: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        """Number of scalar parameters in the block."""
        return int(self.index.numel())


@dataclass(frozen=True, eq=False)
class BlockPartition:
    """Disjoint blocks that cover a flat parameter vector of length ``n``.

    Attributes:
        blocks: The blocks, in the order they are reported.
        n: Length of the flat parameter vector.
    """

    blocks: tuple[Block, ...]
    n: int

    def __post_init__(self) -> None:
        seen = torch.zeros(self.n, dtype=torch.int64)
        for block in self.blocks:
            seen.index_add_(0, block.index, torch.ones_like(block.index))
        if not bool((seen == 1).all()):
            msg = "the blocks must split the parameters into disjoint, covering groups"
            raise ConfigError(msg)

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def names(self) -> list[str]:
        """The blocks' names."""
        return [b.name for b in self.blocks]

    @property
    def sizes(self) -> list[int]:
        """The blocks' sizes."""
        return [b.size for b in self.blocks]

    def labels(self) -> Tensor:
        """Return the block number of every entry of the flat vector, ``(n,)`` int64."""
        return self._labels.clone()

    @cached_property
    def _labels(self) -> Tensor:
        out = torch.empty(self.n, dtype=torch.int64)
        for i, block in enumerate(self.blocks):
            out[block.index] = i
        return out

    def restrict(self, v: Tensor, b: int) -> Tensor:
        """Return the entries of ``v`` (``(n,)`` or ``(n, k)``) in block ``b``."""
        return v[self.blocks[b].index.to(v.device)]

    def embed(self, v_b: Tensor, b: int) -> Tensor:
        """Return ``(n,)``/``(n, k)``, equal to ``v_b`` on block ``b``, else 0."""
        out = v_b.new_zeros((self.n, *v_b.shape[1:]))
        out[self.blocks[b].index.to(v_b.device)] = v_b
        return out

    def sum_squares(self, v: Tensor) -> Tensor:
        """Return ``‖v_b‖²`` for every block (columns of ``(n, k)`` summed separately).

        Returns:
            ``(B,)`` for a vector, ``(B, k)`` for a block, float64 on the CPU.
        """
        return self._segment_sums(v.detach() * v.detach())

    def sum_products(self, u: Tensor, w: Tensor) -> Tensor:
        """Return ``u_bᵀ w_b`` for every block (per column of ``(n, k)``), float64."""
        return self._segment_sums(u.detach() * w.detach())

    def _segment_sums(self, values: Tensor) -> Tensor:
        """Sums of ``values`` (``(n,)`` or ``(n, k)``) over each block, in float64."""
        labels = self._labels.to(values.device)
        cols = values.reshape(self.n, -1).to(torch.float64)
        sums = [
            torch.bincount(labels, weights=cols[:, j], minlength=len(self.blocks))
            for j in range(cols.shape[1])
        ]
        out = torch.stack(sums, dim=1).cpu()
        return out[:, 0] if values.dim() == 1 else out


def _module_path(name: str) -> list[str]:
    return name.split(".")[:-1]


def _by_layers(names: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name in names:
        path = ".".join(_module_path(name)) or "root"
        groups.setdefault(path, []).append(name)
    return groups


def _by_depth(names: list[str], depth: int) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name in names:
        path = ".".join(_module_path(name)[:depth]) or "root"
        groups.setdefault(path, []).append(name)
    return groups


def _parse_depth(text: str) -> int:
    value = text.partition("=")[2].strip()
    try:
        depth = int(value)
    except ValueError:
        depth = 0
    if depth < 1:
        msg = f"blocks depth=N needs an integer N >= 1, got {text!r}"
        raise ConfigError(msg)
    return depth


def _split_group(text: str) -> tuple[str, str]:
    name, sep, pattern = text.partition("=")
    name = name.strip()
    if not sep or not name or not pattern:
        msg = f"{_USAGE}; got {text!r}"
        raise ConfigError(msg)
    if not _NAME.match(name):
        msg = (
            f"block name {name!r} may use only letters, digits, '_', '-' and '.'; "
            f"rename it in {text!r}"
        )
        raise ConfigError(msg)
    return name, pattern


def _regex_groups(
    items: Sequence[str], trainable: list[str], frozen: list[str]
) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for text in items:
        name, pattern = _split_group(text)
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            msg = f"block {name!r}: bad regular expression {pattern!r} ({exc})"
            raise ConfigError(msg) from exc
        if name in groups:
            msg = f"block name {name!r} is given twice; give each group its own name"
            raise ConfigError(msg)
        matched = [p for p in trainable if regex.search(p)]
        if not matched:
            _no_match(name, pattern, trainable, [p for p in frozen if regex.search(p)])
        groups[name] = matched
    return groups


def _no_match(name: str, what: str, trainable: list[str], frozen: list[str]) -> None:
    if frozen:
        shown = ", ".join(frozen[:3]) + (", ..." if len(frozen) > 3 else "")
        msg = (
            f"block {name!r} ({what!r}) has only parameters that do not require "
            f"grad ({shown}); unfreeze them or drop the block"
        )
        raise ConfigError(msg)
    shown = ", ".join(trainable[:4]) + (", ..." if len(trainable) > 4 else "")
    msg = f"block {name!r}: {what!r} matches no parameter name (the names: {shown})"
    raise ConfigError(msg)


def _mapping_groups(
    spec: Mapping[str, Sequence[str | Tensor]],
    model: nn.Module,
    trainable: list[str],
    frozen: list[str],
) -> dict[str, list[str]]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    groups: dict[str, list[str]] = {}
    for name, members in spec.items():
        if not _NAME.match(str(name)):
            msg = f"block name {name!r} must use letters, digits, '_', '-', '.'"
            raise ConfigError(msg)
        listed = [members] if isinstance(members, (str, Tensor)) else members
        names: list[str] = []
        for m in listed:
            pname = by_id.get(id(m)) if isinstance(m, Tensor) else m
            if pname is None:
                msg = f"block {name!r}: a tensor that is not a parameter of the model"
                raise ConfigError(msg)
            if pname not in trainable and pname not in frozen:
                _no_match(name, pname, trainable, [])
            names.append(pname)
        kept = [n for n in names if n in trainable]
        if not kept:
            _no_match(name, ", ".join(names), trainable, names)
        groups[name] = kept
    return groups


def _named_groups(
    spec: BlockSpec, model: nn.Module, trainable: list[str], frozen: list[str]
) -> tuple[dict[str, list[str]], bool]:
    """Return the groups and whether leftovers form a ``rest`` block."""
    if isinstance(spec, Mapping):
        return _mapping_groups(spec, model, trainable, frozen), True
    items = [spec] if isinstance(spec, str) else list(spec)
    if not items or not all(isinstance(s, str) for s in items):
        msg = f"{_USAGE}; got {spec!r}"
        raise ConfigError(msg)
    items = [s.strip() for s in items]
    if len(items) == 1 and items[0] == "layers":
        return _by_layers(trainable), False
    if len(items) == 1 and items[0].startswith("depth="):
        return _by_depth(trainable, _parse_depth(items[0])), False
    if "layers" in items or any(s.startswith("depth=") for s in items):
        msg = (
            f"'layers' and 'depth=N' cannot be combined with other blocks; got {items}"
        )
        raise ConfigError(msg)
    return _regex_groups(items, trainable, frozen), True


def resolve_blocks(
    model: nn.Module, spec: BlockSpec, *, params: Sequence[Tensor] | None = None
) -> BlockPartition:
    """Split the parameters of ``model`` into blocks (see the module docstring).

    Args:
        model: The model (parameter names come from ``named_parameters``).
        spec: ``"layers"``, ``"depth=N"``, ``"NAME=REGEX"`` strings, or a
            mapping ``name -> [parameter names or tensors]``.
        params: The parameters of the flat vector, in its order (e.g. a
            :class:`~sharpkit.curvature.HessianOperator`'s ``params``); default:
            every parameter of ``model`` that requires grad.

    Returns:
        The partition of the flat vector.

    Raises:
        ConfigError: A malformed spec, a regex or name that matches nothing, a
            group of frozen parameters only, or a parameter in two groups.
    """
    named = list(model.named_parameters())
    chosen = (
        [p for _, p in named if p.requires_grad] if params is None else list(params)
    )
    name_of = {id(p): n for n, p in named}
    if any(id(p) not in name_of for p in chosen):
        msg = "params must be parameters of the model to name blocks after them"
        raise ConfigError(msg)
    trainable = [name_of[id(p)] for p in chosen]
    frozen = [n for n, _ in named if n not in set(trainable)]
    groups, with_rest = _named_groups(spec, model, trainable, frozen)
    owner: dict[str, str] = {}
    for group, members in groups.items():
        for pname in members:
            if pname in owner:
                msg = (
                    f"parameter {pname!r} is in blocks {owner[pname]!r} and "
                    f"{group!r}; make the groups disjoint"
                )
                raise ConfigError(msg)
            owner[pname] = group
    if with_rest:
        if REST in groups:
            msg = f"block name {REST!r} is reserved for the parameters no group names"
            raise ConfigError(msg)
        rest = [n for n in trainable if n not in owner]
        if rest:
            groups[REST] = rest
            owner.update(dict.fromkeys(rest, REST))
    position = {pname: i for i, pname in enumerate(trainable)}
    offsets: dict[str, tuple[int, int]] = {}
    start = 0
    for p, pname in zip(chosen, trainable, strict=True):
        offsets[pname] = (start, start + p.numel())
        start += p.numel()
    blocks = []
    for group, members in groups.items():
        ordered = sorted(members, key=lambda m: offsets[m][0])
        index = torch.cat(
            [torch.arange(*offsets[m], dtype=torch.int64) for m in ordered]
        )
        at = tuple(position[m] for m in ordered)
        blocks.append(Block(group, tuple(ordered), index, at))
    return BlockPartition(tuple(blocks), start)


def select_block(names: Sequence[str], text: str) -> tuple[str, list[str]]:
    """The parameters of one block, named as ``--blocks`` names blocks.

    ``text`` is a module path (a block of ``layers`` or of any ``depth=N``:
    the parameters under that module, e.g. ``"fc1"``, ``"layer2"``;
    ``"root"``: the root module's own), or ``"NAME=REGEX"`` (the parameters
    whose names the expression matches).

    Args:
        names: The parameter names to choose from, in order.
        text: The block.

    Returns:
        ``(block name, its parameter names in the order of names)``.

    Raises:
        ConfigError: An empty block, a bad expression, or a path that names
            no module with parameters (the module paths are listed).
    """
    text = text.strip()
    every = list(names)
    if "=" in text:
        groups = _regex_groups([text], every, [])
        name = next(iter(groups))
        return name, groups[name]
    if text == "root":
        chosen = [n for n in every if "." not in n]
    else:
        chosen = [n for n in every if n.startswith(text + ".")]
    if not chosen:
        paths = list(_by_layers(every))
        shown = ", ".join(paths[:8]) + (", ..." if len(paths) > 8 else "")
        msg = (
            f"block {text!r} names no module with parameters; give a module path "
            f"({shown}) or NAME=REGEX"
        )
        raise ConfigError(msg)
    return text, chosen
