"""What an attention mask means, from its values: the one classifier the importers and passes share.

A mask (boolean: True = attend; or additive float: 0 = attend, ≤ -1e4 = hidden, other values a
bias) evaluated on a cache-less sequence of S tokens (query ``q`` and key ``k`` at positions
``0 … S-1``) is compared with the structures a transformer uses:

- ``causal``: ``k ≤ q``;
- ``window``: ``q − W < k ≤ q`` (a sliding window of W positions, Mistral / Gemma / gpt-oss);
- ``bidirectional``: every key;

each possibly ∧ a padding mask on the keys (``padding=True``: the ``attention_mask`` input of the
evaluation hides its zeros) and with an ALiBi bias ``slope_h · k`` (plus any per-row constant,
which softmax ignores) on the visible keys. Anything else is ``general``: kept as an explicit mask.

The caller evaluates the mask at a few sequence lengths; :func:`probe_lengths` picks lengths that
cross every window a mask could hold (from the integer constants its subgraph reads), so a window
of W is never mistaken for causal attention. Nothing here runs a model: the importers (torch FX
evaluation) and passes (onnxruntime through the pass context's evaluator) produce the values.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

HIDDEN = -1e4          # an additive entry at or below this hides the key (exp underflows)
MAX_PROBE = 8200       # longest sequence a mask is evaluated at (a 4096-window needs 4098)
BASE_PROBES = (5, 9, 33)


@dataclasses.dataclass(frozen=True)
class MaskClass:
    """``kind``: causal | window | bidirectional | general; ``window``: W for ``window``;
    ``padding``: the keys are also masked by the padding input; ``alibi``: per-head slopes of an
    additive ALiBi bias (None: no bias); ``reason``: why ``general`` (or what was checked)."""

    kind: str
    window: int | None = None
    padding: bool = False
    alibi: tuple[float, ...] | None = None
    reason: str = ""

    @property
    def structured(self) -> bool:
        return self.kind != "general"

    def describe(self) -> str:
        base = {"causal": "causal", "window": f"sliding window of {self.window}",
                "bidirectional": "bidirectional"}.get(self.kind, "general")
        if self.padding:
            base += " ∧ padding"
        if self.alibi is not None:
            base += f" + ALiBi bias ({len(self.alibi)} heads)"
        return base if self.kind != "general" else f"general ({self.reason})"


@dataclasses.dataclass
class Sample:
    """One evaluation: ``mask`` broadcastable to [B, H, S, S] (S = ``seq``); ``pad`` [B, S] bool
    (True = a real token) when the mask was evaluated with a padding input, else None."""

    seq: int
    mask: np.ndarray
    pad: np.ndarray | None = None


def probe_lengths(constants: Iterable, limit: int | None = None) -> list[int]:
    """Sequence lengths that cross every window a mask could hold: a few small ones, and for each
    integer constant c the mask's subgraph reads (a window size, ``W − 1``, …) the lengths c + 2
    and 2c + 1 — capped by ``limit`` (the model's maximum positions) and :data:`MAX_PROBE`."""
    cap = min(MAX_PROBE, int(limit)) if limit else MAX_PROBE
    out = set(BASE_PROBES)
    for c in constants:
        try:
            c = int(c)
        except (TypeError, ValueError, OverflowError):
            continue
        if 2 <= c <= MAX_PROBE:
            out.add(c + 2)
            if 2 * c + 1 <= 1100:
                out.add(2 * c + 1)
    return sorted(n for n in out if n <= cap) or [min(BASE_PROBES)]


def _visible(m: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """(visible bool, additive values or None, why it is not a mask)."""
    if m.dtype == np.bool_:
        return m, None, None
    if not np.issubdtype(m.dtype, np.floating):
        if np.issubdtype(m.dtype, np.integer) and set(np.unique(m).tolist()) <= {0, 1}:
            return m.astype(bool), None, None
        return m.astype(bool), None, f"has integer values other than 0 and 1 ({m.dtype})"
    m = m.astype(np.float64)
    vis = m > HIDDEN
    vals = np.where(vis, m, 0.0)
    return vis, (vals if np.any(vals != 0) else None), None


def _structure(seq: int, kind: str, window: int | None) -> np.ndarray:
    q = np.arange(seq)[:, None]
    k = np.arange(seq)[None, :]
    if kind == "causal":
        return k <= q
    if kind == "window":
        return (k <= q) & (k > q - window)
    return np.ones((seq, seq), bool)


def _window_of(vis: np.ndarray) -> int | None:
    """The widest span ``q − min visible k + 1`` over the rows (None: no row sees anything)."""
    seq = vis.shape[-1]
    rows = vis.reshape(-1, seq, seq)
    q = np.arange(seq)
    first = np.where(rows.any(-1), rows.argmax(-1), -1)      # [n, S] first visible key per row
    spans = np.where(first >= 0, q[None, :] - first + 1, 0)
    return int(spans.max()) if spans.size and spans.max() > 0 else None


def _alibi(vals: np.ndarray, vis: np.ndarray) -> tuple[tuple[float, ...] | None, str]:
    """Per-head slopes if the additive values on visible keys are ``slope_h · k + c(b, h, q)``."""
    b, h, s, _ = vals.shape
    k = np.arange(s, dtype=np.float64)
    slopes = []
    for hi in range(h):
        v, m = vals[:, hi], vis[:, hi]
        # per row: subtract the value at the row's first visible key, compare with slope·(k − k0)
        slope = None
        for bi in range(b):
            for qi in range(s):
                idx = np.flatnonzero(m[bi, qi])
                if len(idx) < 2:
                    continue
                d = v[bi, qi, idx] - v[bi, qi, idx[0]]
                sl = d[-1] / (k[idx[-1]] - k[idx[0]])
                if not np.allclose(d, sl * (k[idx] - k[idx[0]]), rtol=1e-4, atol=1e-4):
                    return None, f"head {hi}'s bias is not linear in the key position"
                if slope is None:
                    slope = sl
                elif not np.isclose(sl, slope, rtol=1e-4, atol=1e-6):
                    return None, f"head {hi}'s bias slope differs between rows ({slope:.4g} vs {sl:.4g})"
        slopes.append(float(slope or 0.0))
    return tuple(slopes), ""


def classify(samples: Sequence[Sample]) -> MaskClass:
    """The meaning of a mask from its values at several sequence lengths (see the module doc)."""
    if not samples:
        return MaskClass("general", reason="no evaluation")
    windows: list[int] = []
    padded = any(s.pad is not None and not s.pad.all() for s in samples)
    norm = []
    for smp in samples:
        m = np.asarray(smp.mask)
        s = smp.seq
        if m.ndim < 2 or m.shape[-2:] != (s, s) and not (m.shape[-1] == s and m.shape[-2] == 1):
            return MaskClass("general", reason=f"at S={s} the mask has shape {m.shape}, not (…, {s}, {s})")
        m = m.reshape((1,) * (4 - m.ndim) + m.shape) if m.ndim < 4 else m
        if m.ndim > 4:
            return MaskClass("general", reason=f"the mask has rank {m.ndim}")
        vis, vals, why = _visible(m)
        if why:
            return MaskClass("general", reason=f"at S={s} the mask {why}")
        b = max(vis.shape[0], smp.pad.shape[0] if smp.pad is not None else 1)
        vis = np.broadcast_to(vis, (b, vis.shape[1], s, s))
        pad = np.ones((b, s), bool) if smp.pad is None else np.broadcast_to(smp.pad.astype(bool), (b, s))
        # the window is read from the rows of unpadded sequences (padding only hides keys)
        full = pad.all(-1)
        w = _window_of(vis[full]) if full.any() else _window_of(vis)
        if w is not None and w < s:
            windows.append(w)
        norm.append((s, vis, vals, pad))
    if windows and len(set(windows)) > 1:
        return MaskClass("general", reason=f"the visible span differs between lengths ({sorted(set(windows))})")
    window = windows[0] if windows else None
    ok, why = False, ""
    for kind in (("window",) if window else ("causal", "bidirectional")):
        for with_pad in ((True, False) if padded else (False,)):
            ok = True
            for s, vis, vals, pad in norm:
                want = _structure(s, kind, window)[None, None]
                if with_pad:
                    want = want & pad[:, None, None, :]
                if not np.array_equal(vis, np.broadcast_to(want, vis.shape)):
                    ok, why = False, f"at S={s} the visible keys are not {kind}" + (" ∧ padding" if with_pad else "")
                    break
            if ok:
                padded = with_pad
                break
        if ok:
            break
    if not ok:
        return MaskClass("general", reason=why or "the visible keys match no causal/window/bidirectional pattern")
    alibi = None
    biased = [(s, vis, vals) for s, vis, vals, _ in norm if vals is not None]
    if biased:
        s, vis, vals = max(biased, key=lambda t: t[0])
        vals = np.broadcast_to(vals, vis.shape)
        alibi, why = _alibi(vals, vis)
        if alibi is None:
            return MaskClass("general", reason=f"an additive bias that is not ALiBi: {why}")
    return MaskClass(kind, window if kind == "window" else None, padded, alibi,
                     reason=f"checked at S={', '.join(str(s[0]) for s in norm)}")


__all__ = ["MaskClass", "Sample", "classify", "probe_lengths", "HIDDEN", "MAX_PROBE"]


#: ops a padding mask passes through on its way from the ``attention_mask`` input to an
#: ``Attention`` mask operand without changing which keys it hides
_PADDING_VIEWS = ("Cast", "Unsqueeze", "Reshape", "Identity", "Expand")


def padding_mask_input(g, mask: str) -> str | None:
    """The rank-2 graph input ``[B, P+S]`` (``attention_mask``) whose values ``mask`` merely
    re-types / re-shapes / broadcasts (through Cast / Unsqueeze / Reshape / Identity / Expand, and
    ``Where(mask, 0, ≤ HIDDEN)``: its additive form), or None — the case of a
    causal ``Attention`` whose mask operand only adds key padding, which a kernel that takes
    per-sequence lengths (onnxruntime's ``GroupQueryAttention``) expresses as ``sum(mask) − 1``."""
    t = mask
    for _ in range(8):
        if t in g.inputs:
            ty = g.type(t)
            return t if ty.rank == 2 else None
        p = g.producer_of(t)
        if p is None or not p.inputs:
            return None
        if p.op == "Where":          # the additive form: where(mask, 0, blocked)
            vals = [g.params[x].data if x in g.params else None for x in p.inputs[1:3]]
            if len(vals) != 2 or any(v is None or np.size(v) != 1 for v in vals) or \
                    float(np.ravel(vals[0])[0]) != 0.0 or not float(np.ravel(vals[1])[0]) <= HIDDEN:
                return None
        elif p.op not in _PADDING_VIEWS:
            return None
        t = p.inputs[0]
    return None
