"""What a model is conditioned on, declared once, and classifier-free guidance over it.

A model declares its conditioning inputs as ``Conditions`` (its ``conditioning`` attribute; None
for an unconditional model): each input's name, dtype and per-row shape, and how the
unconditional branch of classifier-free guidance is formed from it. Everyone reads that one
declaration: the artifact table names the graphs' inputs from it (``export.format.artifacts``),
the exporters draw their random inputs and the guided wrappers call the network with it, the
manifest records it, the eager samplers and the runtime fill its unconditional branch, and the
server's protocol maps its kinds to served inputs. Class labels are one declaration
(``class_labels``); prompt embeddings, whose unconditional branch is a negative prompt's embedding
fed beside them, will be the next.

Guidance itself is one network call on a 2B batch (``guided_eps``): the conditional rows, then the
unconditional ones, combined by ``zoo.diffusion.guide``. Torch-free: torch or numpy, like the steps.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from zoo.diffusion import _xp, guide

__all__ = ["KINDS", "GUIDANCE_INPUT", "ConditionInput", "Conditions", "class_labels", "guided_eps", "MAX_GUIDANCE", "check_guidance",
           "check_labels"]

# What a request gives for an input of each kind, and so how the runtime fills it in:
#   class   one class index per row (a request's ``labels``, the served ``label``); the null class forms the
#           unconditional branch (``null``), and rows asked for no class get it too.
#   tensor  a (B, *dims) value per row given as it is (an embedding); the unconditional branch is the value of
#           its ``negative`` input, fed beside it (a negative prompt's embedding). The runtime cannot make one
#           from a request yet: the latent-model issue adds the text encoder that does.
KINDS = ("class", "tensor")
# The guided graphs' per-row guidance w input, (B,) float32.
GUIDANCE_INPUT = "guidance"


@dataclass(frozen=True)
class ConditionInput:
    """One conditioning input of a model: the keyword its ``forward`` takes, and the graphs' input of that name."""

    name: str
    dtype: str  # numpy dtype name
    dims: tuple[int, ...] = ()  # per row: the graphs' input is (batch, *dims)
    kind: str = "class"  # one of KINDS
    null: int | None = None  # kind "class": the null class index (K: classes 0..K-1 and the null class)

    def __post_init__(self) -> None:
        ok = (isinstance(self.name, str) and self.name.isidentifier() and self.kind in KINDS
              and isinstance(self.dims, tuple) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in self.dims))
        if ok and self.kind == "class":
            ok = self.dtype == "int64" and not self.dims and isinstance(self.null, int) and not isinstance(self.null, bool) and self.null > 0
        elif ok:
            ok = self.dtype == "float32" and self.null is None
        if not ok:
            raise ValueError(f"conditioning input {self!r} is invalid: expected a name (an identifier), a kind of {KINDS}, "
                             "per-row dims (positive integers); a class is int64 of no dims with its null class K > 0, a "
                             "tensor float32 without one"[:400])

    @property
    def negative(self) -> str | None:
        """The input that holds the unconditional branch's value (kind "tensor"), or None when ``null`` forms it."""
        return f"negative_{self.name}" if self.kind == "tensor" else None

    def unconditional(self, value: Any, feed: dict[str, Any]) -> Any:
        """The unconditional branch's value for rows conditioned on ``value``: the null class, or the negative input."""
        if self.kind == "class":
            return _xp(value).full_like(value, self.null)
        return feed[self.negative]


@dataclass(frozen=True)
class Conditions:
    """A model's conditioning: its inputs (in the order its ``forward`` takes them after ``x, t``)."""

    inputs: tuple[ConditionInput, ...]

    def __post_init__(self) -> None:
        if not self.inputs or not all(isinstance(i, ConditionInput) for i in self.inputs):
            raise ValueError(f"conditioning {self.inputs!r} is invalid: expected one ConditionInput or more"[:300])
        names = [n for n, _, _ in self.graph_inputs(guided=True)]
        if len(set(names)) != len(names):
            raise ValueError(f"conditioning inputs {names} are invalid: every graph input needs its own name")

    def graph_inputs(self, guided: bool) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
        """``(name, dtype, per-row dims)`` of a graph's conditioning inputs, in order: the network's inputs (the
        denoiser's, which takes one branch per call), and for a guided graph each one's negative input, then the
        guidance w."""
        own = tuple((i.name, i.dtype, i.dims) for i in self.inputs)
        if not guided:
            return own
        return own + tuple((i.negative, i.dtype, i.dims) for i in self.inputs if i.negative) + ((GUIDANCE_INPUT, "float32", ()),)

    def of_kind(self, kind: str) -> ConditionInput | None:
        return next((i for i in self.inputs if i.kind == kind), None)

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [{"name": i.name, "dtype": i.dtype, "dims": list(i.dims), "kind": i.kind,
                            **({"null": i.null} if i.kind == "class" else {})} for i in self.inputs]}

    @classmethod
    def from_dict(cls, d: Any) -> Conditions:
        """The declaration as ``to_dict`` writes it; ``ValueError`` naming what is wrong (a manifest's is not trusted)."""
        if not isinstance(d, dict) or not isinstance(d.get("inputs"), list):
            raise ValueError(f"conditioning {d!r} is invalid: expected {{'inputs': [...]}} with at least one input"[:300])
        return cls(tuple(_input(i) for i in d["inputs"]))


def _input(d: Any) -> ConditionInput:
    try:
        return ConditionInput(d["name"], d["dtype"], tuple(d["dims"]), d["kind"], d.get("null"))
    except (KeyError, TypeError):
        raise ValueError(f"conditioning input {d!r} is invalid: expected name, dtype, dims and kind"[:300]) from None


def class_labels(num_classes: int) -> Conditions | None:
    """Class labels: ``labels`` (B,) int64 in 0..K, K = ``num_classes`` the null class; None for K = 0 (unconditional)."""
    return Conditions((ConditionInput("labels", "int64", (), "class", num_classes),)) if num_classes else None


def guided_eps(predict: Any, x: Any, t: Any, conditions: Conditions, feed: dict[str, Any]) -> Any:
    """The guided noise prediction from one network call on a 2B batch: the conditional rows, then the unconditional.

    ``predict(x, t, **conditioning) -> eps`` is the network (a torch module, or an exported graph run
    on numpy arrays); ``feed`` holds ``conditions``' inputs by name (and each one's negative input),
    and the guidance w (``GUIDANCE_INPUT``, a number or (B,)); the halves are combined by ``guide``.
    """
    xp = _xp(x)
    b = x.shape[0]
    both = {i.name: xp.concatenate([feed[i.name], i.unconditional(feed[i.name], feed)]) for i in conditions.inputs}
    eps = predict(xp.concatenate([x, x]), xp.concatenate([t, t]), **both)
    return guide(eps[:b], eps[b:], feed[GUIDANCE_INPUT])  # (B, C, H, W)


# The largest guidance w accepted: far above what any model is sampled at (Stable Diffusion's 7.5, Imagen's up to
# ~30; the digits collapse past 5), and far below where w (eps_cond - eps_uncond) overflows float32 (w ~ 1e38).
MAX_GUIDANCE = 100.0


def check_guidance(guidance: Any, n: int, has_labels: bool) -> np.ndarray | None:
    """Guidance w for n images as a (n,) float32 array (default 1), or None without labels; ``ValueError`` naming it.

    The one guidance check of the eager samplers and the runtime: one w in 0..``MAX_GUIDANCE`` or one
    per image, and only with labels (guidance steers towards a class).
    """
    if not has_labels:
        if guidance is not None:
            raise ValueError("guidance needs labels: the class of each image (or one for all)")
        return None
    try:
        w = np.atleast_1d(np.asarray(1.0 if guidance is None else guidance, dtype=np.float64))
    except (TypeError, ValueError):
        raise ValueError(f"guidance {guidance!r} is invalid: expected numbers"[:200]) from None
    if w.ndim != 1 or len(w) not in (1, n):
        raise ValueError(f"guidance {w.tolist()[:8]} is invalid: expected one number or {n} (one per image)")
    bad = np.flatnonzero(~(np.isfinite(w) & (w >= 0) & (w <= MAX_GUIDANCE)))
    if len(bad):
        where = f" (image {bad[0]})" if len(w) > 1 else ""
        raise ValueError(f"guidance {w[bad[0]]!r}{where} is invalid: expected 0..{MAX_GUIDANCE:g} (0: unconditional, "
                         "1: conditional, above 1: pushed towards the class)")
    return np.broadcast_to(w.astype(np.float32), (n,)).copy()


def check_labels(labels: Any, n: int, count: int, names: Sequence[str] = ()) -> np.ndarray:
    """Labels for n images as a (n,) int64 array: one class or one per image; ``ValueError`` naming the bad value.

    The one label check of the eager samplers and the runtime: each label a class index 0..count-1,
    or one of ``names`` (a bundle's class names); the null class is not a label one asks for.
    """
    if hasattr(labels, "tolist"):  # a torch tensor or numpy array, without importing torch
        labels = labels.tolist()
    raw = labels if isinstance(labels, (list, tuple)) else [labels]
    if any(isinstance(v, (list, tuple)) for v in raw) or len(raw) not in (1, n):
        raise ValueError(f"labels must be one class or {n} (one per image); got {labels!r}"[:200])
    names = list(names)
    out = []
    for v in raw:
        if isinstance(v, str) and v in names:
            out.append(names.index(v))
        elif isinstance(v, numbers.Integral) and not isinstance(v, bool) and 0 <= v < count:
            out.append(int(v))
        else:
            accepted = f"a class index 0..{count - 1}" + (f" or one of the names {names}" if names else "")
            raise ValueError(f"label {v!r} is invalid: expected {accepted}")
    return np.broadcast_to(np.asarray(out, np.int64), (n,)).copy()
