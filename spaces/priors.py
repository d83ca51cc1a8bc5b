"""Placement priors: cheap scores from one hooked forward pass, no training.

Where it sits: *score* -> sample -> train -> track -> frontier. `compute_priors` runs once per
model and calibration set (a Ray task on a GPU worker when there is one) and hands back a
`spaces.scores.PriorScores`; the baselines (`spaces.baselines`), the sampler and the plots read
that value and never need torch. The mathematics is the "Placement priors" section of
docs/methods.md:

- PLoP NFN per site: sqrt(d_in) * mean_t(||W x_t|| / ||x_t||) / ||W||_F (low = adapt first).
- CKA per layer between block input and output, one pooled vector per example; importance = 1 - CKA.
  The pooling follows the architecture: the last token on causal decoders, the mean on encoders.
- activation norm per site: mean_t ||x_t|| of the module input, normalised per kind, per layer.
- optional gradient sensitivity per site: ||grad_W L||_F / ||W||_F (one backward pass).

Cost: the hooks only reduce (two norms per token per site, one pooled vector per example per
block), so the pass costs about one plain no-grad forward (plus `is_causal`'s probe of two short
sequences). Padding (attention_mask 0) is excluded everywhere; tokens are counted once each, so the
batching and the amount of padding do not matter. Hooked tensors may lay tokens out as (batch, seq),
flattened (batch x seq, as OPT's MLP does), (seq, batch) or packed non-pad tokens (`_layout`).
"""

from __future__ import annotations

import itertools
import math
import statistics
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from spaces.errors import PriorsError, PriorsWarning
from spaces.scores import POOLINGS, ActScores, CkaScores, PriorScores, SiteScores
from spaces.space import ModelSpace

# is_causal: the first position's output may move by this fraction when a later token changes
# (float32 round-off), and still count as unchanged.
CAUSAL_RTOL = 1e-4
# A feature matrix whose example-centred Frobenius norm is below this fraction of its uncentred
# norm has no variance worth measuring (float32 round-off on identical vectors is ~1e-7).
DEGENERATE_RTOL = 1e-5
_TINY = 1e-30


# ---- CKA ------------------------------------------------------------------------------------
def _no_variance(z: torch.Tensor, zc: torch.Tensor) -> bool:
    scale = float(torch.linalg.matrix_norm(z))
    return scale == 0.0 or float(torch.linalg.matrix_norm(zc)) <= DEGENERATE_RTOL * scale


def linear_cka(X, Y) -> float | None:
    """Linear CKA of two (n examples x features) matrices, numpy or torch, computed in float64.

    CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F * ||Yc^T Yc||_F) on example-centred Xc, Yc. Returns
    None when it is undefined: fewer than 2 examples, or X or Y without variance across examples
    (every row the same, like the CLS input of layer 0). With n < features the same quantities are
    taken from the n x n Gram matrices (||Y^T X||_F^2 = <X X^T, Y Y^T>), which is cheaper.
    """
    x = torch.as_tensor(X).detach().to("cpu", torch.float64)
    y = torch.as_tensor(Y).detach().to("cpu", torch.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"linear_cka needs two (n, d) matrices with the same n, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] < 2:
        return None
    xc, yc = x - x.mean(0), y - y.mean(0)
    if _no_variance(x, xc) or _no_variance(y, yc):
        return None
    if x.shape[0] < min(x.shape[1], y.shape[1]):
        kx, ky = xc @ xc.T, yc @ yc.T  # (n, n)
        cross, nx, ny = (kx * ky).sum(), torch.linalg.matrix_norm(kx), torch.linalg.matrix_norm(ky)
    else:
        cross = (yc.T @ xc).square().sum()  # (dy, dx)
        nx, ny = torch.linalg.matrix_norm(xc.T @ xc), torch.linalg.matrix_norm(yc.T @ yc)
    return min(1.0, max(0.0, float(cross / (nx * ny))))  # clip round-off only; exact value is in [0, 1]


# ---- token layouts ---------------------------------------------------------------------------
def _layout(lead: tuple[int, ...], mask: torch.Tensor, n_real: int) -> str | None:
    """How a hooked tensor's leading (token) dimensions lay out the batch's (B, T) positions.

    "bt": (B, T), the usual; "flat": (B * T,), (batch, sequence) flattened row-major before a
    module (OPT's MLP); "tb": (T, B), sequence first; "packed": (n_real,), only the non-pad tokens
    in row-major order (unpadded attention). None when nothing matches. (B, T) wins when B == T,
    and "flat" when there is no padding (then "flat" and "packed" are the same thing).
    """
    B, T = mask.shape
    if lead == (B, T):
        return "bt"
    if lead == (B * T,):
        return "flat"
    if lead == (T, B):
        return "tb"
    if lead == (n_real,):
        return "packed"
    return None


def _layout_error(what: str, shape: tuple[int, ...], mask: torch.Tensor, n_real: int) -> PriorsError:
    B, T = mask.shape
    return PriorsError(
        f"{what} saw hidden states of shape {shape}, whose leading dimensions match none of the layouts "
        f"of the batch's attention_mask {(B, T)}: (batch, seq) {(B, T)}, flattened ({B * T},), (seq, batch) "
        f"{(T, B)}, or its {n_real} non-pad tokens ({n_real},): the priors need one row per token at every "
        "site and block; point model.name at a model whose blocks keep one of these layouts"
    )


def _token_mask(layout: str, mask: torch.Tensor) -> torch.Tensor:
    """The flat bool mask of the non-pad tokens, in the order the layout flattens them."""
    if layout == "tb":
        return mask.T.reshape(-1)
    if layout == "packed":
        return torch.ones(int(mask.sum()), dtype=torch.bool, device=mask.device)
    return mask.reshape(-1)


def _as_batch(h: torch.Tensor, layout: str, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, d) hidden states from a tensor in any `_layout` (padded positions zero if packed)."""
    B, T = mask.shape
    if layout == "bt":
        return h
    if layout == "flat":
        return h.reshape(B, T, h.shape[-1])
    if layout == "tb":
        return h.transpose(0, 1)
    out = h.new_zeros(B, T, h.shape[-1])
    out[mask] = h
    return out


# ---- pooling ---------------------------------------------------------------------------------
def _pool(h: torch.Tensor, mask: torch.Tensor, pooling: str, skip_first: bool = False) -> torch.Tensor:
    """One float32 vector per example from (B, T, d) hidden states; mask (B, T) bool, True = token.

    "mean": over non-pad tokens, leaving out the first one when `skip_first` (and the example has
    another); "cls": position 0; "last": the last non-pad token (any padding side).
    """
    positions = torch.arange(mask.shape[1], device=mask.device)
    if pooling == "mean":
        if skip_first:
            first = torch.where(mask, positions, mask.shape[1]).argmin(1)  # first non-pad index
            rest = mask & (positions != first[:, None])
            mask = torch.where(rest.any(1, keepdim=True), rest, mask)
        # where(), not a multiply: a NaN at a padded position must not leak into the sum.
        summed = torch.where(mask[..., None], h, 0).sum(1, dtype=torch.float32)
        return summed / mask.sum(1, keepdim=True)
    if pooling == "cls":
        return h[:, 0].float()
    last = torch.where(mask, positions, -1).argmax(1)  # last non-pad index, any padding side
    return h[torch.arange(h.shape[0], device=h.device), last].float()


class _Recorder:
    """Forward hooks that keep running sums per site and pooled vectors per block."""

    def __init__(self, space: ModelSpace, pooling: str, causal: bool):
        self.space, self.pooling, self.causal = space, pooling, causal
        self.mask: torch.Tensor | None = None  # (B, T) bool for the batch in flight
        self.pooled_rows: torch.Tensor | None = None  # (B,) bool: the examples CKA pools
        self.cka_examples = 0
        self.batch_tokens = 0
        self._masks: dict[str, torch.Tensor] = {}  # layout -> flat token mask, for the batch in flight
        self.sums: dict[tuple[int, int], torch.Tensor] = {}  # site -> [sum ratio, sum ||x||] float64
        self.counts: dict[tuple[int, int], int] = {}  # site -> tokens seen
        self.pooled_in = [[] for _ in range(space.n_layers)]  # per layer: list of (B, d) float32
        self.pooled_out = [[] for _ in range(space.n_layers)]
        self._last_x: torch.Tensor | None = None  # the last site input seen, and its token norms
        self._last_xn: torch.Tensor | None = None

    def set_batch(self, mask: torch.Tensor) -> None:
        self.mask, self._masks = mask, {}
        self.batch_tokens = int(mask.sum())
        # On a causal model a one-token example's only token is the first position (an attention
        # sink, activations far larger than the others'; docs/methods.md, "CKA: representation
        # change across a block (layers)"): it would dominate CKA's centred features.
        self.pooled_rows = mask.sum(1) > 1 if self.causal else torch.ones_like(mask[:, 0])
        self.cka_examples += int(self.pooled_rows.sum())
        self._last_x, self._last_xn = None, None

    def layout(self, h: torch.Tensor, what: str) -> str:
        layout = _layout(tuple(h.shape[:-1]), self.mask, self.batch_tokens)
        if layout is None:
            raise _layout_error(what, tuple(h.shape), self.mask, self.batch_tokens)
        return layout

    def token_mask(self, layout: str) -> torch.Tensor:
        if layout not in self._masks:
            self._masks[layout] = _token_mask(layout, self.mask)
        return self._masks[layout]

    def _input_norms(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token ||x_t||, reused when sites share one input tensor (q, k, v; gate, up)."""
        if x is not self._last_x:
            self._last_x = x
            self._last_xn = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32).reshape(-1)
        return self._last_xn

    def site_hook(self, key: tuple[int, int], bias: torch.Tensor | None):
        name = self.space.module_name(*key)

        def hook(module, args, kwargs, output):
            x = args[0] if args else next(iter(kwargs.values()))
            tokens = self.token_mask(self.layout(x, name))  # (n,) for the n rows of x
            with torch.no_grad():
                wx = output if bias is None else output - bias  # W x_t without a second matmul
                xn = self._input_norms(x)
                wxn = torch.linalg.vector_norm(wx, dim=-1, dtype=torch.float32).reshape(-1)
                both = torch.stack((wxn / xn.clamp_min(_TINY), xn))  # (2, n)
                s = torch.where(tokens, both, 0).sum(-1, dtype=torch.float64)
            self.sums[key] = self.sums[key] + s if key in self.sums else s
            self.counts[key] = self.counts.get(key, 0) + self.batch_tokens

        return hook

    def block_hooks(self, layer: int):
        def pooled(h, what):
            with torch.no_grad():
                h = _as_batch(h, self.layout(h, what), self.mask)
                return _pool(h, self.mask, self.pooling, skip_first=self.causal)[self.pooled_rows]

        def pre(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            self.pooled_in[layer].append(pooled(h, f"block {layer}"))

        def post(module, args, kwargs, output):
            h = output if isinstance(output, torch.Tensor) else output[0]
            self.pooled_out[layer].append(pooled(h, f"the output of block {layer}"))

        return pre, post


# ---- which pooling: is the model causal? --------------------------------------------------------
def is_causal(model: nn.Module, blocks: nn.ModuleList, batch: dict) -> bool:
    """Whether the model is a causal decoder: the last block's output at the first position does not
    change when a later token does. Measured with one forward pass of two short sequences (the first
    calibration example with its last token changed), so it needs no list of architectures.
    The model should be in eval mode (dropout off)."""
    ids, mask = batch["input_ids"], _batch_mask(batch)
    seq = ids[0][mask[0]][:8]
    if len(seq) < 2:
        seq = seq.repeat(2)
    other = seq.clone()
    other[-1] = seq[-1] - 1 if seq[-1] > 0 else 1
    probe = torch.stack((seq, other))
    probe_mask = torch.ones_like(probe)
    seen = {}

    def hook(module, args, output):
        seen["h"] = output if isinstance(output, torch.Tensor) else output[0]

    handle = blocks[-1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(input_ids=probe, attention_mask=probe_mask)
    finally:
        handle.remove()
    h = seen["h"]
    layout = _layout(tuple(h.shape[:-1]), probe_mask.bool(), probe.numel())
    if layout is None:
        raise _layout_error(f"the output of block {len(blocks) - 1}", tuple(h.shape), probe_mask, probe.numel())
    first = _as_batch(h, layout, probe_mask.bool())[:, 0].float()  # (2, d)
    return bool(torch.linalg.vector_norm(first[0] - first[1]) <= CAUSAL_RTOL * torch.linalg.vector_norm(first[0]))


def resolve_pooling(pooling: str, causal: bool) -> str:
    """`auto` -> `last` on a causal decoder (the last non-pad token has seen the whole input; the
    first position sees only itself and carries very large activations), `mean` on an encoder."""
    if pooling != "auto":
        return pooling
    return "last" if causal else "mean"


def _grid(space: ModelSpace, fn) -> list[list[float | None]]:
    """kinds x layers, fn(k, l) where the site exists, None where it does not."""
    return [[fn(k, l) if space.has_site(k, l) else None for l in range(space.n_layers)]
            for k in range(len(space.kinds))]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _per_kind(space: ModelSpace, grid) -> dict[str, float | None]:
    return {alias: _mean(row) for alias, row in zip(space.aliases, grid)}


def compute_priors(
    model: nn.Module,
    space: ModelSpace,
    batches: Iterable[dict],
    *,
    pooling: str = "auto",
    gradients: bool = False,
    labels: Iterable[torch.Tensor] | None = None,
) -> PriorScores:
    """All placement priors from one hooked forward pass over `batches`.

    batches: dicts with `input_ids` and `attention_mask` (0 = padding), passed to the model as
    keyword arguments (minus `labels`). pooling, CKA's one vector per example: "mean" over non-pad
    tokens, "cls" (first token), "last" (last non-pad token), or "auto": "last" on a causal model,
    "mean" otherwise (`is_causal`, measured on the first batch). On a causal model CKA never pools
    the first position unless asked to ("cls"): "mean" leaves it out, and examples of one token are
    left out of CKA (not of the other scores). gradients: also run one backward pass for
    ||grad_W L||_F / ||W||_F, where L is the example-weighted mean of the model's per-batch loss;
    labels come from each batch's `labels` or from `labels`, one tensor per batch.

    The result (`PriorScores`; per_site grids are kinds x layers, None where a layer lacks that
    kind): nfn per site and per kind (mean over layers; low = adapt first); cka per layer (None
    where degenerate), importance = 1 - CKA (for degenerate layers the median importance of the
    others, 0.0 if none, so they rank mid-pack); act per site, per site normalised by that kind's
    mean over layers (removes the depth trend of pre-LN residual norms and the scale gap between
    kinds) and per layer (the mean of a layer's normalised sites; high = adapt first); grad per
    site and per kind, or None; pooling (resolved), causal and cka_examples (the examples CKA pooled).
    Warns when most layers' CKA importance is near zero (`PriorScores.cka_warning`).
    The model runs in eval mode; every module's previous mode, and every parameter's
    requires_grad, are restored and all hooks removed, also on error.
    """
    if pooling not in POOLINGS:
        raise PriorsError(f"priors.pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    sites = space.sites()
    modules = {s: model.get_submodule(space.module_name(*s)) for s in sites}
    blocks = model.get_submodule(space.block_prefix)
    device = next(model.parameters()).device
    weights = [modules[s].weight for s in sites]
    w_norms = [float(torch.linalg.vector_norm(w.detach(), dtype=torch.float32)) for w in weights]  # ||W||_F

    modes = [(m, m.training) for m in model.modules()]
    requires = [(p, p.requires_grad) for p in model.parameters()]
    handles = []
    grad_sums = None
    n_examples = n_tokens = 0
    if labels is not None:
        batches = _with_labels(batches, labels)
    batches = iter(batches)
    first = next(batches, None)
    causal = None
    try:
        model.eval()
        if first is not None:
            probe = {k: v.to(device) for k, v in first.items() if k in ("input_ids", "attention_mask")}
            causal = is_causal(model, blocks, probe)
            pooling = resolve_pooling(pooling, causal)
        rec = _Recorder(space, pooling, bool(causal))
        for s, m in modules.items():
            bias = getattr(m, "bias", None)
            bias = None if bias is None else bias.detach()
            handles.append(m.register_forward_hook(rec.site_hook(s, bias), with_kwargs=True))
        for l in range(space.n_layers):
            pre, post = rec.block_hooks(l)
            handles.append(blocks[l].register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(blocks[l].register_forward_hook(post, with_kwargs=True))
        if gradients:
            for w in weights:
                w.requires_grad_(True)
        for batch in itertools.chain([] if first is None else [first], batches):
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items() if k != "labels"}
            mask = _batch_mask(inputs)
            rec.set_batch(mask)
            n_b = mask.shape[0]
            n_examples += n_b
            n_tokens += rec.batch_tokens
            if not gradients:
                with torch.no_grad():
                    model(**inputs)
                continue
            if "labels" not in batch:
                raise PriorsError("gradients=True needs labels: put `labels` in each batch or pass labels=")
            with torch.enable_grad():
                loss = model(**inputs, labels=batch["labels"].to(device)).loss
                if loss is None:
                    raise PriorsError(f"{type(model).__name__} returned no loss for labels; gradients=True "
                                      "needs a model with a task head (e.g. *ForSequenceClassification)")
                grads = torch.autograd.grad(loss * n_b, weights, allow_unused=True)
            grads = [torch.zeros((), device=device) if g is None else g.detach().float() for g in grads]
            grad_sums = grads if grad_sums is None else [a + g for a, g in zip(grad_sums, grads)]
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
        for p, flag in requires:
            p.requires_grad_(flag)
    if n_examples == 0:
        raise PriorsError("no calibration batches: compute_priors needs at least one example; raise "
                          "priors.calibration_examples or give the task more training examples")
    scores = _summarise(space, rec, w_norms, grad_sums, n_examples, n_tokens, pooling, causal)
    note = scores.cka_warning()
    if note:
        warnings.warn(note, PriorsWarning, stacklevel=2)
    return scores


def _batch_mask(batch: dict) -> torch.Tensor:
    """The batch's (B, T) bool mask of non-pad tokens; every example must have one."""
    mask = batch.get("attention_mask")
    mask = torch.ones_like(batch["input_ids"], dtype=torch.bool) if mask is None else mask.bool()
    empty = int((mask.sum(1) == 0).sum())
    if empty:
        raise PriorsError(f"{empty} calibration example(s) have no non-pad token: drop empty examples "
                          "from the data")
    return mask


def _with_labels(batches, labels):
    for batch, y in zip(batches, labels, strict=True):
        yield {**batch, "labels": y}


def _summarise(space, rec, w_norms, grad_sums, n_examples, n_tokens, pooling, causal) -> PriorScores:
    index = {s: i for i, s in enumerate(space.sites())}

    def nfn(k, l):
        s = (k, l)
        if s not in rec.sums or w_norms[index[s]] == 0.0:
            return None  # never called in the forward pass, or an all-zero weight
        mean_ratio = float(rec.sums[s][0]) / rec.counts[s]
        return math.sqrt(space.shapes[k][l][0]) * mean_ratio / w_norms[index[s]]

    def act(k, l):
        s = (k, l)
        return float(rec.sums[s][1]) / rec.counts[s] if s in rec.sums else None

    nfn_grid, act_grid = _grid(space, nfn), _grid(space, act)
    kind_means = [_mean(row) for row in act_grid]
    act_norm = [[None if v is None or not m else v / m for v in row] for row, m in zip(act_grid, kind_means)]
    act_layer = [_mean(row[l] for row in act_norm) for l in range(space.n_layers)]

    cka = []
    for l in range(space.n_layers):
        if not rec.pooled_in[l]:
            cka.append(None)
            continue
        x, y = torch.cat(rec.pooled_in[l]), torch.cat(rec.pooled_out[l])
        cka.append(linear_cka(x, y))
    valid = [1.0 - c for c in cka if c is not None]
    neutral = statistics.median(valid) if valid else 0.0

    grad = None
    if grad_sums is not None:
        def g(k, l):
            i = index[(k, l)]
            if not w_norms[i]:
                return None
            return float(torch.linalg.vector_norm(grad_sums[i]) / n_examples) / w_norms[i]
        grad_grid = _grid(space, g)
        grad = SiteScores(_frozen(grad_grid), _per_kind(space, grad_grid))

    return PriorScores(
        kinds=tuple(space.aliases),
        n_layers=space.n_layers,
        nfn=SiteScores(_frozen(nfn_grid), _per_kind(space, nfn_grid)),
        cka=CkaScores(tuple(cka), tuple(neutral if c is None else 1.0 - c for c in cka),
                      tuple(c is None for c in cka), neutral),
        act=ActScores(_frozen(act_grid), _frozen(act_norm), tuple(act_layer)),
        n_examples=n_examples,
        n_tokens=n_tokens,
        pooling=pooling,
        grad=grad,
        causal=causal,
        cka_examples=rec.cka_examples,
    )


def _frozen(grid) -> tuple:
    return tuple(tuple(row) for row in grid)
