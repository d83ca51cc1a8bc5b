"""Tests for analysis/pareto.py and analysis/plots.py (the frontier step).

Dominance and hypervolume are checked against independent brute-force oracles: the definition of
dominance applied pairwise, inclusion-exclusion over the boxes the points dominate, and counting
unit cells on an integer grid.
"""

import html
import itertools
import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.pareto import (
    dominates,
    frontier,
    hypervolume,
    hypervolume_report,
    normalize,
    pareto_mask,
)
from analysis.plots import plot_pareto_html, plot_pareto_png

FAST = settings(max_examples=75, deadline=None)

# --- oracles --------------------------------------------------------------------------------------


def brute_mask(points, senses):
    def better_eq(a, b, s):
        return a >= b if s == "max" else a <= b

    def strictly(a, b, s):
        return a > b if s == "max" else a < b

    out = []
    for i, p in enumerate(points):
        dominated = any(
            all(better_eq(q[k], p[k], s) for k, s in enumerate(senses))
            and any(strictly(q[k], p[k], s) for k, s in enumerate(senses))
            for j, q in enumerate(points) if j != i
        )
        out.append(not dominated)
    return out


def inclusion_exclusion_hv(points, ref):
    """Volume of the union of boxes [p, ref] (minimization), by inclusion-exclusion. n <= ~8."""
    pts = [p for p in points if all(v < r for v, r in zip(p, ref))]
    total = 0.0
    for size in range(1, len(pts) + 1):
        for subset in itertools.combinations(pts, size):
            corner = [max(c) for c in zip(*subset)]
            total += (-1) ** (size + 1) * math.prod(r - c for r, c in zip(ref, corner))
    return total


def grid_count_hv(points, ref):
    """Number of unit cells dominated, for integer points and an integer reference."""
    cells = itertools.product(*(range(r) for r in ref))
    return sum(any(all(p[k] <= c[k] for k in range(len(ref))) for p in points) for c in cells)


# --- strategies -----------------------------------------------------------------------------------

# A few fixed values make ties and duplicates common; arbitrary floats cover the rest.
value = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0]),
                  st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))


@st.composite
def point_sets(draw, min_size=0, max_size=25):
    d = draw(st.sampled_from([2, 3]))
    senses = tuple(draw(st.lists(st.sampled_from(["max", "min"]), min_size=d, max_size=d)))
    pts = draw(st.lists(st.tuples(*[value] * d), min_size=min_size, max_size=max_size))
    if pts and draw(st.booleans()):
        pts.append(draw(st.sampled_from(pts)))  # an exact duplicate
    return pts, senses


unit_points = st.integers(2, 3).flatmap(
    lambda d: st.lists(st.tuples(*[st.floats(0, 1, allow_nan=False)] * d), min_size=0, max_size=6)
)

# --- pareto_mask ----------------------------------------------------------------------------------


@FAST
@given(point_sets())
def test_pareto_mask_matches_brute_force(case):
    pts, senses = case
    assert pareto_mask(pts, senses) == brute_mask(pts, senses)


@FAST
@given(point_sets(min_size=1))
def test_front_is_nonempty_and_keeps_duplicates_together(case):
    pts, senses = case
    mask = pareto_mask(pts, senses)
    assert any(mask)
    for i, j in itertools.combinations(range(len(pts)), 2):
        if pts[i] == pts[j]:
            assert mask[i] == mask[j]


def test_pareto_mask_hand_cases():
    # metric max, params min: (0.9, 100) and (0.8, 10) trade off; (0.8, 100) is dominated by both.
    assert pareto_mask([(0.9, 100), (0.8, 10), (0.8, 100)], ("max", "min")) == [True, True, False]
    assert pareto_mask([(1, 1), (1, 1)], ("min", "min")) == [True, True]
    assert pareto_mask([(1, 1), (1, 2)], ("min", "min")) == [True, False]  # a tie on one objective
    assert pareto_mask([(1, 1), (1, 2)], ("min", "max")) == [False, True]
    assert pareto_mask([], ("min", "min")) == []


def test_pareto_mask_exact_where_a_sum_would_round():
    # A coordinate sum rounds these to equal values; dominance must still be decided exactly.
    pts = [(1e16, 1.0), (1e16, 0.0)]
    assert pareto_mask(pts, ("min", "min")) == [False, True]
    assert dominates((0.9, 1e6, 1e-3), (0.9, 1e6, 1e-3 + 1e-13), ("max", "min", "min"))


def test_bad_input_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="senses"):
        pareto_mask([(1, 2)], ("max", "minimize"))
    with pytest.raises(ValueError, match="objectives"):
        pareto_mask([(1, 2, 3)], ("max", "min"))
    with pytest.raises(ValueError, match="non-finite"):
        pareto_mask([(1, float("nan"))], ("max", "min"))


# --- normalize ------------------------------------------------------------------------------------


@FAST
@given(point_sets(min_size=1))
def test_normalize_maps_into_unit_box_best_at_zero(case):
    pts, senses = case
    norm, (ideal, nadir) = normalize(pts, senses)
    assert all(-1e-12 <= v <= 1 + 1e-12 for p in norm for v in p)
    for k, s in enumerate(senses):
        col = [p[k] for p in pts]
        assert ideal[k] == (max(col) if s == "max" else min(col))
        assert nadir[k] == (min(col) if s == "max" else max(col))


def test_normalize_explicit_bounds_and_max_sense():
    norm, bounds = normalize([(0.8, 50.0)], ("max", "min"), ideal=(1.0, 0.0), nadir=(0.6, 100.0))
    assert norm == [pytest.approx((0.5, 0.5))]
    assert bounds.ideal == (1.0, 0.0) and bounds.nadir == (0.6, 100.0)
    with pytest.raises(ValueError, match="swap"):
        normalize([(0.8, 50.0)], ("max", "min"), ideal=(0.6, 0.0), nadir=(1.0, 100.0))


# --- hypervolume ----------------------------------------------------------------------------------

IDENTITY = ((0.0,) * 3, (1.0,) * 3)  # bounds under which normalization changes nothing (min senses)


def hv_min(points, ref):
    d = len(ref)
    return hypervolume(points, ("min",) * d, reference=ref, bounds=(IDENTITY[0][:d], IDENTITY[1][:d]))


def test_hypervolume_hand_cases():
    assert hv_min([(0.5, 0.5)], (1, 1)) == pytest.approx(0.25)
    # Two boxes of 0.5 overlapping in a 0.25 square.
    assert hv_min([(0.0, 0.5), (0.5, 0.0)], (1, 1)) == pytest.approx(0.75)
    assert hv_min([(0.5, 0.5, 0.5)], (1, 1, 1)) == pytest.approx(0.125)
    # Box volumes 0.5 and 0.25, overlapping in [.5,1]x[.5,1]x[.5,1] = 0.125.
    assert hv_min([(0.0, 0.0, 0.5), (0.5, 0.5, 0.0)], (1, 1, 1)) == pytest.approx(0.625)
    assert hv_min([(1.2, 0.0)], (1, 1)) == 0.0  # outside the reference on one objective
    assert hv_min([], (1, 1)) == 0.0


def test_hypervolume_default_bounds_and_reference_are_reported():
    # metric max, params min. Own bounds: ideal (0.9, 10), nadir (0.7, 100), so the points map to
    # (0, 1) and (1, 0); against (1.1, 1.1): two 1.1 x 0.1 strips overlapping in 0.1 x 0.1 -> 0.21.
    rep = hypervolume_report([(0.9, 100), (0.7, 10)], ("max", "min"))
    assert rep["hypervolume"] == pytest.approx(0.21)
    assert rep["reference"] == [1.1, 1.1]
    assert rep["ideal"] == [0.9, 10] and rep["nadir"] == [0.7, 100]
    assert rep["senses"] == ["max", "min"] and rep["n_points"] == 2
    assert hypervolume_report([], ("max", "min"))["hypervolume"] == 0.0


@FAST
@given(unit_points)
def test_hypervolume_matches_inclusion_exclusion(pts):
    d = len(pts[0]) if pts else 2
    ref = (1.0,) * d
    assert hv_min(pts, ref) == pytest.approx(inclusion_exclusion_hv(pts, ref), abs=1e-9)


@FAST
@given(st.integers(2, 3).flatmap(
    lambda d: st.lists(st.tuples(*[st.integers(0, 5)] * d), min_size=1, max_size=8)))
def test_hypervolume_matches_grid_count(pts):
    d = len(pts[0])
    ref = (6,) * d
    got = hypervolume(pts, ("min",) * d, reference=ref, bounds=((0,) * d, (1,) * d))
    assert got == pytest.approx(grid_count_hv(pts, ref))


@FAST
@given(point_sets(min_size=1, max_size=8))
def test_hypervolume_mixed_senses_equals_hv_of_normalized_points(case):
    pts, senses = case
    norm, bounds = normalize(pts, senses)
    ref = (1.1,) * len(senses)
    assert hypervolume(pts, senses) == pytest.approx(inclusion_exclusion_hv(norm, ref), abs=1e-9)


@FAST
@given(unit_points, st.data())
def test_hypervolume_monotone_when_adding_a_point(pts, data):
    d = len(pts[0]) if pts else 2
    new = data.draw(st.tuples(*[st.floats(0, 1.2, allow_nan=False)] * d))
    ref = (1.1,) * d
    assert hv_min(pts + [new], ref) >= hv_min(pts, ref) - 1e-12


@FAST
@given(unit_points.filter(bool), st.data())
def test_dominated_point_leaves_hypervolume_unchanged(pts, data):
    d = len(pts[0])
    base = data.draw(st.sampled_from(pts))
    worse = tuple(v + data.draw(st.floats(0, 0.5, allow_nan=False)) for v in base)
    ref = (1.1,) * d
    assert hv_min(pts + [worse], ref) == pytest.approx(hv_min(pts, ref), abs=1e-12)


def test_same_bounds_make_searches_comparable():
    senses = ("max", "min", "min")
    bounds = ((1.0, 1e3, 0.0), (0.5, 1e6, 2.0))
    a = [(0.9, 1e5, 0.5)]
    b = a + [(0.95, 2e5, 0.4)]  # search b found everything a did, and more
    assert hypervolume(b, senses, bounds=bounds) > hypervolume(a, senses, bounds=bounds)


# --- frontier -------------------------------------------------------------------------------------


def trial(run_id, metric, params, hours, status="completed", **extra):
    return {"run_id": run_id, "key": f"r8 q[{run_id}]", "score": metric, "trainable_params": params,
            "compute_hours": hours, "status": status, **extra}


def test_frontier_keeps_completed_within_budget_and_marks_the_front():
    trials = [
        trial("a", 0.90, 1000, 1.0),
        trial("b", 0.80, 100, 1.0),
        trial("c", 0.80, 1000, 1.0),             # dominated by a and by b
        trial("d", 0.70, 1000, 0.1),             # worst metric, but cheapest
        trial("e", 0.99, 10, 0.01, status="failed"),      # would dominate all; must not count
        trial("f", 0.99, 10, 0.01, status="pruned"),
        trial("g", 0.99, 10, 0.01, within_budget=False),
        trial("h", None, None, None, status="failed"),    # failed trials may lack objectives
    ]
    rows = frontier(trials)
    assert {r["run_id"]: r["pareto"] for r in rows} == {"a": True, "b": True, "c": False, "d": True}
    assert "pareto" not in trials[0]  # inputs are not modified


def test_frontier_objectives_are_configurable():
    trials = [trial("a", 0.9, 1000, 1.0, loss=0.3), trial("b", 0.8, 100, 1.0, loss=0.2)]
    rows = frontier(trials, objectives=(("loss", "min"),))
    assert [r["pareto"] for r in rows] == [False, True]


def test_frontier_names_a_missing_objective():
    with pytest.raises(ValueError, match="compute_hours"):
        frontier([{"run_id": "x", "status": "completed", "score": 0.5, "trainable_params": 10}])


# --- plots ----------------------------------------------------------------------------------------


def plot_trials():
    return [
        trial("1", 0.90, 2_000_000, 0.8, baseline="all sites"),
        trial("2", 0.88, 300_000, 0.3, baseline="attention <only>"),
        trial("3", 0.70, 500_000, 0.5),
        trial("4", 0.91, 900_000, 0.6, key='<script>alert("x")</script> & q[0]'),
        trial("5", 0.95, 100_000, 0.1, status="failed"),
    ]


def test_png_is_written(tmp_path):
    import matplotlib.image

    out = plot_pareto_png(plot_trials(), tmp_path / "front.png")
    img = matplotlib.image.imread(out)
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0  # not a blank canvas
    plot_pareto_png([], tmp_path / "empty.png")  # an empty search still gets a figure
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_html_is_self_contained_and_escaped(tmp_path):
    trials = plot_trials()
    page = plot_pareto_html(trials, tmp_path / "front.html", cost_unit="CPU-core-hours").read_text()
    for t in trials:
        assert html.escape(t["key"]) in page
    assert "<script>alert" not in page and "attention &lt;only&gt;" in page
    assert "plotly" not in page.lower()
    assert not re.search(r"\b(src|href)\s*=", page)  # nothing fetched
    svg = ET.fromstring(re.search(r"<svg.*?</svg>", page, re.S).group(0))
    ns = "{http://www.w3.org/2000/svg}"
    titles = [c.find(f"{ns}title").text for c in svg.iter(f"{ns}circle")]
    assert len(titles) == 4  # the failed trial is in the table but not in the scatter
    tip = next(t for t in titles if "run: 2" in t)
    assert "r8 q[2]" in tip and "accuracy: 0.88" in tip and "300000" in tip and "CPU-core-hours: 0.3" in tip
    assert page.count("<tr") == 1 + len(trials)  # header + one row per trial, failed ones included


def test_analysis_does_not_import_torch():
    code = "import sys, analysis.pareto, analysis.plots; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0
