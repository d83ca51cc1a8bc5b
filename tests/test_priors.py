"""Placement priors (the *score* step): formulas, padding, determinism, budgets, the heatmap.

Offline and fast: tiny BERT / GPT-2 / Llama built from configs, and a toy model whose block
inputs we control exactly, so each score can be checked against its closed form.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
)

from analysis.heatmap import plot_heatmap
from spaces.discovery import discover
from spaces.placement import Placement
from spaces.baselines import make_baselines
from spaces.budget import make_budget
from spaces.errors import PriorsError, PriorsWarning
from spaces.priors import _pool, compute_priors, linear_cka
from spaces.scores import PriorScores

R_REF = 8
# Random tiny blocks (and the toy's pure rescaling) leave CKA near 1 at every layer, so the priors
# warn that CKA ties; test_cka_ties_warn checks the warning itself.
pytestmark = pytest.mark.filterwarnings("ignore::spaces.errors.PriorsWarning")


# ---- models and data -----------------------------------------------------------------------
def _bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=24, num_labels=3))


def _gpt2():
    torch.manual_seed(0)
    return GPT2ForSequenceClassification(GPT2Config(
        vocab_size=64, n_embd=16, n_layer=3, n_head=2, pad_token_id=0, bos_token_id=0,
        eos_token_id=0, num_labels=3))


def _llama():
    torch.manual_seed(0)
    return LlamaForSequenceClassification(LlamaConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=24, pad_token_id=0, num_labels=3))


MODELS = {"bert": _bert, "gpt2": _gpt2, "llama": _llama}


def _examples(n=8, seed=1):
    """Token lists of lengths 3..10, each starting with the same token (a CLS/BOS stand-in)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 11, (n,), generator=g).tolist()
    return [[2] + torch.randint(3, 64, (L - 1,), generator=g).tolist() for L in lengths]


def _batches(examples, sizes, extra_pad=0, labels=None):
    """Right-padded batches (pad id 0, mask 0) of the given sizes, `extra_pad` beyond the longest."""
    out, start = [], 0
    for size in sizes:
        chunk = examples[start:start + size]
        T = max(len(e) for e in chunk) + extra_pad
        ids = torch.zeros(len(chunk), T, dtype=torch.long)
        mask = torch.zeros(len(chunk), T, dtype=torch.long)
        for i, e in enumerate(chunk):
            ids[i, :len(e)] = torch.tensor(e)
            mask[i, :len(e)] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if labels is not None:
            batch["labels"] = labels[start:start + size]
        out.append(batch)
        start += size
    return out


def _assert_close(a, b, rel=1e-5, abs_=1e-5, where="scores"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_close(a[k], b[k], rel, abs_, f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, rel, abs_, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=rel, abs_tol=abs_), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls are fastest on one thread; on a busy machine OpenMP threads that wait for a
    core make each one take milliseconds instead of microseconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=sorted(MODELS))
def scored(request):
    model = MODELS[request.param]()
    space = discover(model)
    scores = compute_priors(model, space, _batches(_examples(), [3, 5]))
    return request.param, model, space, scores


# ---- CKA -----------------------------------------------------------------------------------
def _hsic_cka(X, Y):
    """Reference: CKA from centred Gram matrices, HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    return float(np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L)))


def test_cka_is_one_for_identical_inputs():
    X = np.random.default_rng(0).normal(size=(50, 7))
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n,d", [(40, 6), (10, 30)])  # feature path and Gram path
def test_cka_matches_reference_and_is_invariant(n, d):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, d))
    Y = X @ rng.normal(size=(d, d + 2)) + 2.0 * rng.normal(size=(n, d + 2))
    ref = _hsic_cka(X, Y)
    assert 0.05 < ref < 0.95  # a case that is neither trivially 0 nor 1
    assert linear_cka(X, Y) == pytest.approx(ref, rel=1e-9)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    P, _ = np.linalg.qr(rng.normal(size=(d + 2, d + 2)))
    assert linear_cka(X @ Q, Y) == pytest.approx(ref, rel=1e-9)
    assert linear_cka(X, Y @ P) == pytest.approx(ref, rel=1e-9)
    assert linear_cka(3.7 * X, Y) == pytest.approx(ref, rel=1e-9)
    assert linear_cka(X, 0.01 * Y) == pytest.approx(ref, rel=1e-9)
    assert linear_cka(torch.tensor(X, dtype=torch.float32), torch.tensor(Y)) == pytest.approx(ref, rel=1e-5)


def test_cka_near_zero_for_independent_features():
    rng = np.random.default_rng(2)
    assert linear_cka(rng.normal(size=(2000, 5)), rng.normal(size=(2000, 5))) < 0.05


def test_cka_is_none_without_variance():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(20, 4))
    same = np.tile(rng.normal(size=(1, 4)), (20, 1))
    assert linear_cka(same, X) is None
    assert linear_cka(X, same) is None
    assert linear_cka(X[:1], X[:1]) is None
    assert linear_cka(X, X + 1e3) == pytest.approx(1.0)  # an offset alone is not degenerate


def test_pooling_uses_only_real_tokens():
    h = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    h[~right] = float("nan")  # whatever sits at padded positions must not leak
    assert torch.equal(_pool(h, right, "mean"), torch.stack([h[0, :3].mean(0), h[1, :2].mean(0)]))
    assert torch.equal(_pool(h, right, "last"), torch.stack([h[0, 2], h[1, 1]]))
    assert torch.equal(_pool(h, right, "cls"), h[:, 0])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    h = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    assert torch.equal(_pool(h, left, "last"), h[:, 3])


def test_mean_pooling_can_leave_out_the_first_token():
    h = torch.arange(3 * 4 * 2, dtype=torch.float32).reshape(3, 4, 2)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)  # right, left, one token
    want = torch.stack([h[0, 1:3].mean(0), h[1, 2:4].mean(0), h[2, 0]])  # a lone token is kept
    assert torch.equal(_pool(h, mask, "mean", skip_first=True), want)
    assert torch.equal(_pool(h, mask, "last", skip_first=True), _pool(h, mask, "last"))


def test_causal_models_leave_one_token_examples_out_of_cka():
    """On a causal model a one-token example's only token is the first position (huge activations
    in real decoders): CKA pools the other examples only; NFN and activation still count it."""
    examples = _examples()
    with_one = examples[:4] + [[7]] + examples[4:]
    llama = _llama()
    space = discover(llama)
    both = compute_priors(llama, space, _batches(with_one, [9]))
    without = compute_priors(llama, space, _batches(examples, [8]))
    assert both.causal is True and both.pooling == "last"
    assert (both.n_examples, both.cka_examples) == (9, 8)
    assert both.cka.per_layer == pytest.approx(without.cka.per_layer, rel=1e-6)
    assert both.n_tokens == without.n_tokens + 1 and both.nfn != without.nfn
    bert = _bert()  # an encoder keeps every example
    scores = compute_priors(bert, discover(bert), _batches(with_one, [9]))
    assert (scores.causal, scores.pooling, scores.cka_examples) == (False, "mean", 9)


def test_last_pooling_flags_a_constant_last_token():
    """The degenerate case on a decoder: every example ends with the same token (an EOS), so with
    last-token pooling the input of layer 0 is one vector for all; flagged, never a NaN."""
    examples = [e + [5] for e in _examples()]
    model = _llama()
    scores = compute_priors(model, discover(model), _batches(examples, [3, 5], extra_pad=2))
    assert scores.pooling == "last" and scores.cka.degenerate == (True, False, False)
    assert scores.cka.importance[0] == pytest.approx(float(np.median(scores.cka.importance[1:])))


def test_cka_ties_warn():
    torch.manual_seed(0)
    model = _Toy(torch.randn(400, 8), scale=2.0)  # every block only rescales: CKA is 1 everywhere
    with pytest.warns(PriorsWarning, match=r"CKA importance is below 0\.001 for 3 of 3 layers") as seen:
        scores = compute_priors(model, discover(model), _toy_batches(400))
    assert len(seen) == 1 and "\n" not in str(seen[0].message)
    assert scores.cka_warning() == str(seen[0].message)
    # more than half the layers tied: a warning; half or fewer: none
    assert PriorScores.from_summaries(["a"], [1.0], [0.0, 0.0, 0.0005, 0.2], [1.0] * 4).cka_warning()
    assert PriorScores.from_summaries(["a"], [1.0], [0.0, 0.0, 0.1, 0.2], [1.0] * 4).cka_warning() is None


def test_pooling_auto_is_the_config_default():
    from trainables.config import ConfigError, load_config

    assert load_config([]).priors.pooling == "auto"
    with pytest.raises(ConfigError, match="priors.pooling 'first' is not one of auto, mean, cls, last"):
        load_config([], ["priors.pooling=first"])
    with pytest.raises(PriorsError, match="not one of auto, mean, cls, last"):
        compute_priors(_bert(), discover(_bert()), _batches(_examples(), [8]), pooling="first")


def test_cls_pooling_flags_the_constant_first_token():
    # Every example starts with token 2, so the CLS input to BERT's layer 0 is the same vector.
    model = _bert()
    scores = compute_priors(model, discover(model), _batches(_examples(), [8]), pooling="cls")
    cka = scores.cka
    assert cka.degenerate == (True, False, False)
    assert cka.per_layer[0] is None
    assert cka.importance[0] == pytest.approx(float(np.median(cka.importance[1:])))
    assert all(math.isfinite(v) for v in cka.importance)


# ---- NFN and activation norm on a toy model with controlled inputs --------------------------
class _Block(nn.Module):
    def __init__(self, d, scale):
        super().__init__()
        self.a, self.b, self.scale = nn.Linear(d, d), nn.Linear(d, d), scale

    def forward(self, hidden_states):
        self.a(hidden_states), self.b(hidden_states)  # observed by the hooks, not used
        return hidden_states * self.scale


class _Toy(nn.Module):
    """Block l sees the embedding table rows times scale**l; sites a and b in every block."""

    def __init__(self, table, n_layers=3, scale=1.0):
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(table)
        self.layers = nn.ModuleList(_Block(table.shape[1], scale) for _ in range(n_layers))

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        for block in self.layers:
            h = block(h)
        return h


def _toy_batches(vocab, n=16, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, T), generator=g)
    mask = torch.ones(n, T, dtype=torch.long)
    mask[n // 2:, T // 2:] = 0
    return [{"input_ids": ids, "attention_mask": mask}]


def test_nfn_random_weight_near_one_and_activation_norm_exact():
    torch.manual_seed(0)
    d, vocab = 32, 400
    table = torch.randn(vocab, d)
    model = _Toy(table, scale=2.0)
    for block in model.layers:
        for lin in (block.a, block.b):
            nn.init.normal_(lin.weight)
            nn.init.normal_(lin.bias, std=5.0)  # large: W x must be taken net of the bias
    batches = _toy_batches(vocab)
    space = discover(model)
    scores = compute_priors(model, space, batches)
    for row in scores.nfn.per_site:
        for v in row:
            assert v == pytest.approx(1.0, abs=0.1)
    # act: mean over non-pad tokens of ||x_t||; block l sees 2**l times the embeddings.
    ids, mask = batches[0]["input_ids"], batches[0]["attention_mask"].bool()
    base = table[ids][mask].norm(dim=-1).mean().item()
    assert scores.act.per_site[0] == pytest.approx([base, 2 * base, 4 * base], rel=1e-5)
    # normalised by the kind's mean over layers (7/3 base), then averaged over kinds
    assert scores.act.per_layer == pytest.approx([3 / 7, 6 / 7, 12 / 7], rel=1e-5)
    assert scores.cka.per_layer == pytest.approx([1.0] * 3)


def test_nfn_aligned_weight_scores_high_and_plop_avoids_it():
    torch.manual_seed(0)
    d, k, vocab = 32, 2, 400
    U, _ = torch.linalg.qr(torch.randn(d, k))  # inputs live in a k-dim subspace
    model = _Toy(torch.randn(vocab, k) @ U.T)
    for block in model.layers:
        block.a.weight.data = torch.randn(d, k) @ U.T  # rows span the input subspace
        nn.init.normal_(block.b.weight)  # random directions
    space = discover(model)
    scores = compute_priors(model, space, _toy_batches(vocab))
    nfn = scores.nfn.per_kind
    assert nfn["a"] > 2.5  # about sqrt(d / k) = 4
    assert nfn["b"] == pytest.approx(1.0, abs=0.15)
    plop = _baseline(scores, space, 0.5, "plop")
    assert plop.key == "r8 b[0-2]"


# ---- token layouts: a toy whose blocks see (batch, seq), flattened, (seq, batch) or packed ---------
class _LayoutBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, hidden_states):
        return hidden_states + self.b(torch.tanh(self.a(hidden_states)))


class _LayoutToy(nn.Module):
    """Every block gets, and gives back, its hidden states in one layout."""

    def __init__(self, layout, vocab=64, d=8, n_layers=3):
        super().__init__()
        torch.manual_seed(0)
        self.layout = layout
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(_LayoutBlock(d) for _ in range(n_layers))

    def forward(self, input_ids, attention_mask):
        h, mask = self.embed(input_ids), attention_mask.bool()
        B, T, d = h.shape
        to, back = {
            "bt": (lambda x: x, lambda x: x),
            "flat": (lambda x: x.reshape(B * T, d), lambda x: x.reshape(B, T, d)),
            "tb": (lambda x: x.transpose(0, 1), lambda x: x.transpose(0, 1)),
            "packed": (lambda x: x[mask], lambda x: x.new_zeros(B, T, d).masked_scatter(mask[..., None], x)),
            "halves": (lambda x: x.reshape(2, B * T // 2, d), lambda x: x.reshape(B, T, d)),
        }[self.layout]
        for block in self.layers:
            h = back(block(to(h)))
        return h


@pytest.mark.parametrize("layout", ["flat", "tb", "packed"])
def test_any_token_layout_gives_the_same_scores(layout):
    """Sites and blocks that see flattened (OPT's MLP), sequence-first or packed tokens score exactly
    as with (batch, seq) tensors; padding (extra_pad) makes packed differ from flattened."""
    batches = _batches(_examples(), [3, 5], extra_pad=3)
    reference = _LayoutToy("bt")
    space = discover(reference)
    want = compute_priors(reference, space, batches, pooling="mean")
    got = compute_priors(_LayoutToy(layout), space, batches, pooling="mean")
    _assert_close(got.to_dict(), want.to_dict())
    assert any(v < 0.999 for v in want.cka.per_layer)  # CKA is not trivially 1 here


def test_a_layout_that_matches_nothing_is_one_clear_line():
    model = _LayoutToy("halves")
    with pytest.raises(PriorsError) as err:
        compute_priors(model, discover(model), _batches(_examples(), [8]), pooling="mean")
    line = str(err.value)
    assert "\n" not in line and "shape (2, 40, 8)" in line and "attention_mask (8, 10)" in line
    assert "flattened (80,)" in line and "point model.name at" in line
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ---- the real architectures ----------------------------------------------------------------
@pytest.mark.parametrize("name,pooling", [("bert", "mean"), ("bert", "cls"), ("gpt2", "mean"),
                                          ("gpt2", "last"), ("llama", "last")])
def test_padding_and_batching_do_not_change_scores(name, pooling):
    model, examples = MODELS[name](), _examples()
    space = discover(model)
    tight = compute_priors(model, space, _batches(examples, [8]), pooling=pooling)
    padded = compute_priors(model, space, _batches(examples, [3, 2, 3], extra_pad=5), pooling=pooling)
    _assert_close(tight.to_dict(), padded.to_dict())
    # only BERT's CLS input to layer 0 is the same for every example
    assert tight.cka.degenerate == (pooling == "cls", False, False)


def test_shapes_finite_and_json(scored):
    name, model, space, scores = scored
    K, L = len(space.kinds), space.n_layers
    examples = _examples()
    assert scores.n_examples == 8 and scores.n_tokens == sum(map(len, examples))
    assert scores.kinds == tuple(space.aliases) and scores.n_layers == L
    for grid in (scores.nfn.per_site, scores.act.per_site, scores.act.per_site_normalized):
        assert len(grid) == K and all(len(row) == L for row in grid)
        assert all(math.isfinite(v) and v > 0 for row in grid for v in row)
    assert set(scores.nfn.per_kind) == set(space.aliases)
    for key in ("per_layer", "importance", "degenerate"):
        assert len(getattr(scores.cka, key)) == L
    assert all(0.0 <= v <= 1.0 for v in scores.cka.per_layer)
    assert len(scores.act.per_layer) == L and scores.grad is None
    assert PriorScores.from_dict(json.loads(json.dumps(scores.to_dict()))) == scores


def test_deterministic_in_eval_mode_and_mode_restored():
    model = _bert()  # hidden dropout 0.1: scores would differ run to run if left in train mode
    model.train()
    space, batches = discover(model), _batches(_examples(), [4, 4])
    first = compute_priors(model, space, batches)
    assert model.training and all(m.training for m in model.modules())
    assert compute_priors(model, space, batches) == first


def test_hooks_removed_and_mode_restored_on_error():
    model = _gpt2()
    model.train()
    good = _batches(_examples(), [8])[0]

    def batches():
        yield good
        raise RuntimeError("calibration data broke")

    with pytest.raises(RuntimeError, match="calibration data broke"):
        compute_priors(model, discover(model), batches())
    assert model.training
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_gradients_match_one_full_batch_backward():
    model = _bert()
    for p in model.parameters():
        p.requires_grad_(False)
    space, examples = discover(model), _examples()
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    scores = compute_priors(model, space, _batches(examples, [3, 5], extra_pad=2),
                            gradients=True, labels=[y[:3], y[3:]])
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    # Reference: the mean loss over all 8 examples in one batch, one backward.
    model.eval()
    weights = [model.get_submodule(space.module_name(k, l)).weight for k, l in space.sites()]
    for w in weights:
        w.requires_grad_(True)
    model(**_batches(examples, [8], labels=y)[0]).loss.backward()
    for (k, l), w in zip(space.sites(), weights):
        want = (w.grad.norm() / w.detach().norm()).item()
        assert scores.grad.per_site[k][l] == pytest.approx(want, rel=1e-4)


# ---- what each prior alone would pick (the baselines) ------------------------------------------
RANKS = [2, 4, 8, 16]


def _baselines(scores, space, fraction):
    budget = make_budget(space, fraction, R_REF, min(RANKS))
    return {name: b.placement for b in make_baselines(space, budget, RANKS, scores) for name in (b.name, *b.aliases)}


def _baseline(scores, space, fraction, name):
    return _baselines(scores, space, fraction)[name]


@pytest.mark.parametrize("fraction", [0.1, 0.5, 1.0])
def test_prior_baselines_fit_the_budget(scored, fraction):
    _, _, space, scores = scored
    full = Placement.full(space, R_REF)
    choices = _baselines(scores, space, fraction)
    assert {"plop", "cka", "activation"} <= set(choices)
    for placement in choices.values():
        assert not placement.is_empty()
        assert placement.adapter_params(space) <= fraction * full.adapter_params(space)
        assert placement.rank_values() <= set(RANKS)  # only ranks the search trains
    if fraction == 1.0:
        assert all(choices[name] == full for name in ("plop", "cka", "activation"))


def test_prior_baselines_follow_the_scores():
    import dataclasses

    model = _llama()
    space = discover(model)
    scores = compute_priors(model, space, _batches(_examples(), [8]))
    nfn = {a: 2.0 for a in space.aliases} | {"o": 0.5, "v": 0.9}
    scores = dataclasses.replace(
        scores, nfn=dataclasses.replace(scores.nfn, per_kind=nfn),
        cka=dataclasses.replace(scores.cka, importance=(0.1, 0.9, 0.3)),
        act=dataclasses.replace(scores.act, per_layer=(1.5, 0.7, 0.8)))
    widths = {a: sum(space.site_width(space.kind_index(a), l) for l in range(3)) for a in space.aliases}
    full = Placement.full(space, R_REF).adapter_params(space)
    # room for exactly o and v at all layers, not a third kind
    fraction = R_REF * (widths["o"] + widths["v"] + min(widths["q"], widths["k"]) - 1) / full
    choices = _baselines(scores, space, fraction)
    assert choices["plop"].key == "r8 v[0-2] o[0-2]"
    assert choices["cka"].key.startswith("r8 ") and {l for _, l in choices["cka"].sites()} == {1}
    assert {l for _, l in choices["activation"].sites()} == {0}


def test_prior_baselines_fall_back_to_a_lower_rank_the_search_uses():
    model = _bert()
    space = discover(model)
    scores = compute_priors(model, space, _batches(_examples(), [8]))
    plop = _baseline(scores, space, 0.1, "plop")
    # one BERT kind at rank 8 on all 3 layers needs 768 of the 499 allowed parameters: the next
    # allowed rank, 4, fits (a rank outside search.ranks, like 5, is never proposed)
    best = min(scores.nfn.per_kind, key=scores.nfn.per_kind.get)
    assert {space.aliases[k] for k, _ in plop.sites()} == {best} and plop.n_sites == 3
    assert plop.rank_values() == {4}


# ---- the heatmap ---------------------------------------------------------------------------
def test_heatmap_png_is_written(tmp_path):
    model = _gpt2()
    space = discover(model)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    scores = compute_priors(model, space, _batches(_examples(), [8], labels=y), gradients=True)
    path = plot_heatmap(scores, tmp_path / "plots" / "priors.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


# ---- KappaTune (data-free condition numbers) ---------------------------------------------------
@pytest.mark.parametrize("name", ["bert", "llama"])
def test_kappa_orders_sites_as_peft_does_and_gives_a_baseline(name):
    from peft import find_kappa_target_modules

    from spaces.kappa import kappa_scores

    model = MODELS[name]()
    space = discover(model)
    kappa = kappa_scores(model, space)
    ours = sorted(space.sites(), key=lambda s: kappa.per_site[s[0]][s[1]])
    site_names = {space.module_name(k, l) for k, l in space.sites()}
    peft_order = [n for n in find_kappa_target_modules(model, top_p=1.0, show_progress=False)["target_modules"]
                  if n in site_names]
    assert [space.module_name(k, l) for k, l in ours] == peft_order
    assert all(v >= 1.0 for row in kappa.per_site for v in row)  # sigma_max / sigma_min
    scores = dataclasses.replace(compute_priors(model, space, _batches(_examples(), [8])), kappa=kappa)
    assert PriorScores.from_dict(json.loads(json.dumps(scores.to_dict()))) == scores
    picked = _baselines(scores, space, 0.3)["kappa"]
    best_site = ours[0]
    assert best_site in picked.sites() and picked.adapter_params(space) <= 0.3 * Placement.full(space, R_REF).adapter_params(space)
