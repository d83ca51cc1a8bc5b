"""Discovery, the Placement value type, exact adapter counts (equal to PEFT's) and the budget."""

import json
import random

import pytest
from torch import nn

from spaces import BudgetError, ModelSpace, Placement, make_budget, repair
from spaces.discovery import discover
from tests.conftest import tiny_models

EXPECTED = {
    "bert": ("bert.encoder.layer", ["q", "k", "v", "o", "up", "down"]),
    "gpt2": ("transformer.h", ["qkv", "o", "up", "down"]),
    "llama": ("model.layers", ["q", "k", "v", "o", "gate", "up", "down"]),
}


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_discovery_finds_blocks_and_kinds(arch):
    space = discover(tiny_models()[arch]())
    prefix, aliases = EXPECTED[arch]
    assert space.block_prefix == prefix
    assert list(space.aliases) == aliases
    assert space.n_layers == 3
    assert len(space.sites()) == 3 * len(aliases)
    # GPT-2's projections are Conv1D (fan_in_fan_out); the fused qkv is 16 -> 48.
    if arch == "gpt2":
        assert all(space.fan_in_fan_out) and space.shapes[0][0] == (16, 48)
    else:
        assert not any(space.fan_in_fan_out)
    # Heads, poolers and embeddings are never sites.
    names = {space.module_name(k, l) for k, l in space.sites()}
    assert not any("classifier" in n or "score" in n or "embed" in n or "pooler" in n for n in names)


def test_discovery_error_names_what_it_looked_for():
    with pytest.raises(ValueError, match="nn.ModuleList of same-class blocks"):
        discover(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))


def test_space_round_trips_through_json():
    space = discover(tiny_models()["llama"]())
    assert ModelSpace.from_dict(json.loads(space.to_json())) == space


def _random_placement(space, rng, mixed=False):
    sites = rng.sample(space.sites(), rng.randint(1, len(space.sites())))
    grid = [[0] * space.n_layers for _ in space.kinds]
    for k, l in sites:
        grid[k][l] = rng.choice([1, 2, 4, 8]) if mixed else 4
    return Placement(space.aliases, tuple(tuple(r) for r in grid))


@pytest.mark.parametrize("arch", list(EXPECTED))
@pytest.mark.parametrize("mixed", [False, True])
def test_adapter_params_equal_peft_count(arch, mixed):
    from peft import LoraConfig, get_peft_model

    make = tiny_models()[arch]
    space = discover(make())
    rng = random.Random(hash((arch, mixed)) % 1000)
    for _ in range(3):
        p = _random_placement(space, rng, mixed)
        model = get_peft_model(make(), LoraConfig(task_type="SEQ_CLS", **p.lora_config_kwargs(space)))
        lora = sum(t.numel() for n, t in model.named_parameters() if "lora_" in n)
        assert p.adapter_params(space) == lora
        # Exactly the placement's modules were adapted, nothing matched by suffix.
        adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n}
        assert adapted == {f"base_model.model.{t}" for t in p.target_modules(space)}


def test_placement_key_and_round_trip():
    space = discover(tiny_models()["bert"]())
    p = Placement.from_sites(space, [(0, 0), (0, 1), (0, 2), (2, 0), (2, 2)], 8)
    assert p.key == "r8 q[0-2] v[0,2]"
    assert Placement.from_json(p.to_json()) == p
    assert Placement.from_dict(json.loads(json.dumps(p.to_dict()))).key == p.key
    mixed = Placement(p.kinds, ((2, 2, 0),) + ((0, 0, 0),) * 4 + ((0, 0, 4),))
    assert mixed.key == "q[0-1]r2 down[2]r4"


def test_placement_validation():
    space = discover(tiny_models()["bert"]())
    with pytest.raises(ValueError, match=">= 0"):
        Placement(space.aliases, ((-1, 0, 0),) * 6)
    with pytest.raises(ValueError, match="kinds"):
        Placement(("q",), ((1, 0, 0),)).checked(space)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        Placement.from_sites(space, [(0, 0)], 0)


def test_budget_bounds_and_smallest_site():
    space = discover(tiny_models()["bert"]())
    full = Placement.full(space, 8).adapter_params(space)
    assert make_budget(space, 0.5, 8, 1).max_params == 0.5 * full
    for bad in (0.0, -0.1, 1.01):
        with pytest.raises(BudgetError, match="outside"):
            make_budget(space, bad, 8, 1)
    # Cheapest site at rank 2 is 2 * (16 + 16) = 64 params of 8 * 3 * (4 * 32 + 2 * 40) = 4992:
    # 1% is too small, and the suggested minimum (rounded up) is enough.
    with pytest.raises(BudgetError, match=r"raise --budget to at least 0\.01283") as err:
        make_budget(space, 0.01, 8, 2)
    suggested = float(str(err.value).rsplit(" ", 1)[-1])
    assert make_budget(space, suggested, 8, 2).max_params >= 64


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_repair_always_fits_and_is_deterministic(arch):
    space = discover(tiny_models()[arch]())
    rng = random.Random(1)
    for _ in range(50):
        fraction = rng.choice([0.05, 0.1, 0.3, 0.5, 1.0])
        budget = make_budget(space, fraction, 8, 1)
        raw = _random_placement(space, rng)
        raw = Placement.from_sites(space, raw.sites(), rng.choice([1, 2, 4, 8, 16, 32]))
        fixed, steps = repair(raw, space, budget, [1, 2, 4, 8, 16, 32])
        assert budget.fits(fixed, space)
        assert repair(raw, space, budget, [1, 2, 4, 8, 16, 32]) == (fixed, steps)
        if budget.fits(raw, space):
            assert fixed == raw and steps == []
        assert set(fixed.sites()) <= set(raw.sites()) or "cheapest" in " ".join(steps)
