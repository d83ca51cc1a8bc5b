"""Placement priors: cheap scores from one hooked forward pass, no training.

Where it sits: *score* -> sample -> train -> track -> frontier. `compute_priors` runs once per
model and calibration set (a Ray task on a GPU worker when there is one) and hands back a
`spaces.scores.PriorScores`; the baselines (`spaces.baselines`), the sampler and the plots read
that value and never need torch. The mathematics is the "Placement priors" section of
docs/methods.md:

- PLoP NFN per site: sqrt(d_in) * mean_t(||W x_t|| / ||x_t||) / ||W||_F (low = adapt first).
- CKA per layer between block input and output, one pooled vector per example; importance = 1 - CKA.
- activation norm per site: mean_t ||x_t|| of the module input, normalised per kind, per layer.
- optional gradient sensitivity per site: ||grad_W L||_F / ||W||_F (one backward pass).

Cost: the hooks only reduce (two norms per token per site, one pooled vector per example per
block), so the pass costs about one plain no-grad forward. Padding (attention_mask 0) is excluded
everywhere; tokens are counted once each, so the batching and the amount of padding do not matter.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

import torch
from torch import nn

from spaces.errors import PriorsError
from spaces.scores import ActScores, CkaScores, PriorScores, SiteScores
from spaces.space import ModelSpace

POOLINGS = ("mean", "cls", "last")
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


# ---- the hooked pass ----------------------------------------------------------------------
def _pool(h: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One float32 vector per example from (B, T, d) hidden states; mask (B, T) bool, True = token."""
    if pooling == "mean":
        # where(), not a multiply: a NaN at a padded position must not leak into the sum.
        summed = torch.where(mask[..., None], h, 0).sum(1, dtype=torch.float32)
        return summed / mask.sum(1, keepdim=True)
    if pooling == "cls":
        return h[:, 0].float()
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, positions, -1).argmax(1)  # last non-pad index, any padding side
    return h[torch.arange(h.shape[0], device=h.device), last].float()


class _Recorder:
    """Forward hooks that keep running sums per site and pooled vectors per block."""

    def __init__(self, space: ModelSpace, pooling: str):
        self.space, self.pooling = space, pooling
        self.mask: torch.Tensor | None = None  # (B, T) bool for the batch in flight
        self.mask_flat: torch.Tensor | None = None  # (B*T,)
        self.batch_tokens = 0
        self.sums: dict[tuple[int, int], torch.Tensor] = {}  # site -> [sum ratio, sum ||x||] float64
        self.counts: dict[tuple[int, int], int] = {}  # site -> tokens seen
        self.pooled_in = [[] for _ in range(space.n_layers)]  # per layer: list of (B, d) float32
        self.pooled_out = [[] for _ in range(space.n_layers)]
        self._last_x: torch.Tensor | None = None  # the last site input seen, and its token norms
        self._last_xn: torch.Tensor | None = None

    def set_batch(self, mask: torch.Tensor) -> None:
        self.mask, self.mask_flat = mask, mask.reshape(-1)
        self.batch_tokens = int(mask.sum())
        self._last_x, self._last_xn = None, None

    def _input_norms(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token ||x_t||, reused when sites share one input tensor (q, k, v; gate, up)."""
        if x is not self._last_x:
            self._last_x = x
            self._last_xn = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32).reshape(-1)
        return self._last_xn

    def _check(self, h: torch.Tensor, what: str) -> None:
        if tuple(h.shape[:-1]) != tuple(self.mask.shape):
            raise RuntimeError(
                f"{what} saw hidden states of shape {tuple(h.shape)}, but the batch's attention_mask "
                f"is {tuple(self.mask.shape)}; priors need (batch, seq, features) inputs at every site"
            )

    def site_hook(self, key: tuple[int, int], bias: torch.Tensor | None):
        name = self.space.module_name(*key)

        def hook(module, args, kwargs, output):
            x = args[0] if args else next(iter(kwargs.values()))
            self._check(x, name)
            with torch.no_grad():
                wx = output if bias is None else output - bias  # W x_t without a second matmul
                xn = self._input_norms(x)
                wxn = torch.linalg.vector_norm(wx, dim=-1, dtype=torch.float32).reshape(-1)
                both = torch.stack((wxn / xn.clamp_min(_TINY), xn))  # (2, B*T)
                s = torch.where(self.mask_flat, both, 0).sum(-1, dtype=torch.float64)
            self.sums[key] = self.sums[key] + s if key in self.sums else s
            self.counts[key] = self.counts.get(key, 0) + self.batch_tokens

        return hook

    def block_hooks(self, layer: int):
        def pre(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            self._check(h, f"block {layer}")
            with torch.no_grad():
                self.pooled_in[layer].append(_pool(h, self.mask, self.pooling))

        def post(module, args, kwargs, output):
            h = output if isinstance(output, torch.Tensor) else output[0]
            with torch.no_grad():
                self.pooled_out[layer].append(_pool(h, self.mask, self.pooling))

        return pre, post


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
    pooling: str = "mean",
    gradients: bool = False,
    labels: Iterable[torch.Tensor] | None = None,
) -> PriorScores:
    """All placement priors from one hooked forward pass over `batches`.

    batches: dicts with `input_ids` and `attention_mask` (0 = padding), passed to the model as
    keyword arguments (minus `labels`). pooling: "mean" over non-pad tokens, "cls" (first token) or
    "last" (last non-pad token) for CKA. gradients: also run one backward pass for
    ||grad_W L||_F / ||W||_F, where L is the example-weighted mean of the model's per-batch loss;
    labels come from each batch's `labels` or from `labels`, one tensor per batch.

    The result (`PriorScores`; per_site grids are kinds x layers, None where a layer lacks that
    kind): nfn per site and per kind (mean over layers; low = adapt first); cka per layer (None
    where degenerate), importance = 1 - CKA (for degenerate layers the median importance of the
    others, 0.0 if none, so they rank mid-pack); act per site, per site normalised by that kind's
    mean over layers (removes the depth trend of pre-LN residual norms and the scale gap between
    kinds) and per layer (the mean of a layer's normalised sites; high = adapt first); grad per
    site and per kind, or None.
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

    rec = _Recorder(space, pooling)
    modes = [(m, m.training) for m in model.modules()]
    requires = [(p, p.requires_grad) for p in model.parameters()]
    handles = []
    grad_sums = None
    n_examples = n_tokens = 0
    if labels is not None:
        batches = _with_labels(batches, labels)
    try:
        model.eval()
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
        for batch in batches:
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items() if k != "labels"}
            mask = inputs.get("attention_mask")
            mask = torch.ones_like(inputs["input_ids"], dtype=torch.bool) if mask is None else mask.bool()
            empty = int((mask.sum(1) == 0).sum())
            if empty:
                raise PriorsError(f"{empty} calibration example(s) have no non-pad token: drop empty examples "
                                  "from the data")
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
    return _summarise(space, rec, w_norms, grad_sums, n_examples, n_tokens, pooling)


def _with_labels(batches, labels):
    for batch, y in zip(batches, labels, strict=True):
        yield {**batch, "labels": y}


def _summarise(space, rec, w_norms, grad_sums, n_examples, n_tokens, pooling) -> PriorScores:
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
    )


def _frozen(grid) -> tuple:
    return tuple(tuple(row) for row in grid)
