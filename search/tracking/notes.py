"""A search described in Markdown where its users look: the MLflow UI renders the tag
`mlflow.note.content` as the description of an experiment, a run or a registered model.

Where it sits: frontier -> **notes**, the last step of a search (`search.driver`) and of
`search/report.py`, and of a deploy (`search.tracking.export`). `search_note` renders the search's
description from its trial records and what its parent run holds (`SearchFacts`): first line the
recommendation (the line the UI shows while the description is collapsed), then the links to the
runs views (`search.tracking.ui`), the Pareto plot, the frontier and the baselines, the priors, what was
searched and the commands to export the chosen trial. A later step may pass its own
`recommendation` and a `confirmed_table` (a frontier retrained over seeds) in Markdown.
`publish_notes` writes it on the search run and its experiment, and a short note on each trial run.
What the end of a search decided about each trial run (recommended, which frontier it is on, its
seed statistics, the run's name in the runs table) comes in `Marks`. The renderers are pure
functions of their inputs; only `read_facts` and the `publish_*` functions talk to MLflow. "Best"
follows the search's metric (`SearchFacts.sense`: lower is better for `nll`).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field

from analysis.direction import best_first, gain, word
from analysis.mlflow_read import read_json_artifact
from analysis.stats import SeedStats
from search.tracking import ui
from search.tracking.ui import DEPLOY_ALIAS as ALIAS
from search.tracking.ui import default_model_name
from spaces.scores import PriorScores
from trainables import record as R
from trainables.record import TrialRecord

NOTE_TAG = "mlflow.note.content"
RUN_NOTE_LIMIT = 8000  # MLflow's run tag values (experiment tags allow 20,000)
KEY_WIDTH = 90  # placement keys longer than this are cut in tables (the full key is on the run)
MAX_ROWS = 12


@dataclass(frozen=True)
class SearchFacts:
    """What a search's parent run says about it: params (as logged, strings), the file names at
    the root of its artifacts, the priors' scores when it computed them."""
    experiment: str
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    params: dict = field(default_factory=dict)
    artifacts: tuple[str, ...] = ()
    scores: PriorScores | None = None

    @property
    def metric_name(self) -> str:
        return self.params.get(R.METRIC_NAME, R.SCORE)

    @property
    def sense(self) -> str:
        """"max" or "min": which way the search's metric improves (`trainables.record.sense`)."""
        return R.sense(self.metric_name)

    @property
    def cost_unit(self) -> str:
        return self.params.get(R.COST_UNIT, R.GPU_HOURS)

    def artifact(self, name: str, prefix: str = "") -> str | None:
        """The artifact `prefix + name` if the run has it, else the shortest one ending in `name`
        (`pareto.png` from search/report.py, `<search>-pareto.png` from the end of the search)."""
        if prefix + name in self.artifacts:
            return prefix + name
        found = sorted((a for a in self.artifacts if a == name or a.endswith("-" + name)), key=len)
        return found[0] if found else None


@dataclass(frozen=True)
class Marks:
    """What the end of a search decided about its trial runs (`search.phases.publish`), as the
    notes show it. Without marks (`Marks()`), a record's own `pareto` flag is the single-run frontier."""

    recommended: str | None = None  # the recommended trial's run id (tag recommended=true)
    names: dict = field(default_factory=dict)  # run id -> the run's name in the runs table
    single_run_front: frozenset | None = None  # run ids non-dominated among the single runs
    confirmed_front: frozenset = frozenset()  # run ids non-dominated over seed means
    seeds: dict = field(default_factory=dict)  # run id -> SeedStats of a confirmed placement

    def on_single_front(self, r: TrialRecord) -> bool:
        return r.pareto if self.single_run_front is None else r.run_id in self.single_run_front

    def name(self, r: TrialRecord) -> str:
        return self.names.get(r.run_id) or f"{r.trial_id} {r.key}"


def read_facts(client, parent_run_id: str, tracking_uri: str) -> SearchFacts:
    run = client.get_run(parent_run_id)
    exp = client.get_experiment(run.info.experiment_id)
    artifacts = tuple(a.path for a in client.list_artifacts(parent_run_id) if not a.is_dir)
    scores = read_json_artifact(client, parent_run_id, "scores.json") if "scores.json" in artifacts else None
    return SearchFacts(exp.name, exp.experiment_id, parent_run_id, tracking_uri, dict(run.data.params), artifacts,
                       PriorScores.from_dict(scores) if scores else None)


# ---- numbers and cells -------------------------------------------------------------------------------
def _int(v) -> str:
    return "-" if v is None else f"{int(v):,}"


def _score(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _cost(v) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:,.2f}" if v >= 1 else f"{v:.2g}"


def _key(key: str) -> str:
    key = key if len(key) <= KEY_WIDTH else key[: KEY_WIDTH - 1] + "…"
    return f"`{key}`"


def _table(head: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    cells = lambda row: "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"  # noqa: E731
    rule = "|" + "|".join("---:" if i in right else "---" for i in range(len(head))) + "|"
    return "\n".join([cells(head), rule, *map(cells, rows)])


# ---- the recommendation --------------------------------------------------------------------------
def recommended(records: list[TrialRecord], sense: str = "max") -> TrialRecord | None:
    """The completed trial with the best score (the highest; the lowest for a `sense` "min"
    metric); ties go to fewer trainable params, then less compute. Always on the Pareto frontier."""
    done = [r for r in records if r.status == R.COMPLETED and r.score is not None]
    inf = float("inf")
    return min(done, key=lambda r: (best_first(r.score, sense), r.trainable_params or inf, r.compute_hours or inf),
               default=None)


def default_recommendation(facts: SearchFacts, records: list[TrialRecord]) -> str:
    """The single-seed recommendation in one line (the line the UI shows while the description is
    collapsed): which placement won, by how much over the best baseline (else the runner-up), at
    what size and cost. `_caveat` follows it."""
    best, metric, sense = recommended(records, facts.sense), facts.metric_name, facts.sense
    if best is None:
        return (f"**No recommendation yet**: none of the {len(records)} trials has completed "
                "([all trials](" + ui.view_link(facts.experiment_id, facts.parent_run_id) + ")).")
    others = [r for r in records if r.status == R.COMPLETED and r.score is not None and r.run_id != best.run_id]
    rival = max((r for r in others if r.baseline), key=lambda r: gain(r.score, sense), default=None)
    if rival is not None:
        label = f"the best baseline (`{rival.baseline}`: {_score(rival.score)})"
    else:
        rival = max(others, key=lambda r: gain(r.score, sense), default=None)
        label = f"the runner-up ({_score(rival.score)})" if rival else ""
    trial = f"[trial {best.trial_id}]({ui.run_link(facts.experiment_id, best.run_id)})"
    line = f"**Recommended: {_key(best.key)}** ({trial}): {metric} **{_score(best.score)}**"
    if rival is not None:
        line += f", **{best.score - rival.score:+.4f}** {word(sense, 'over', 'against')} {label}"
    line += f"; **{_int(best.trainable_params)}** trainable parameters"
    if rival is not None and rival.trainable_params is not None and best.trainable_params is not None:
        fewer = rival.trainable_params - best.trainable_params
        line += f" ({fewer:,} fewer)" if fewer >= 0 else f" ({-fewer:,} more)"
    return line + f", {_cost(best.compute_hours)} {facts.cost_unit}."


def _caveat(records: list[TrialRecord], sense: str = "max") -> str:
    best = recommended(records, sense)
    done = sum(r.status == R.COMPLETED and r.score is not None for r in records)
    which = f" (it is the `{best.baseline}` baseline)" if best.baseline else ""
    return (f"Best of {done} completed trials{which}. *Each placement was trained once, on one seed, and scored "
            "on the validation split: a gap of a couple of points can be seed noise. Retrain the frontier's "
            "placements over several seeds before trusting a small gap.*")


# ---- sections ------------------------------------------------------------------------------------
def _links(facts: SearchFacts, prefix: str) -> str:
    eid, pid = facts.experiment_id, facts.parent_run_id
    parts = [f"[{v.title}]({ui.view_link(eid, pid, v)})" for v in ui.VIEWS]
    html, png = facts.artifact("pareto.html", prefix), facts.artifact("pareto.png", prefix)
    heat = facts.artifact("scores.png", prefix)
    if html:
        parts.append(f"[interactive Pareto plot and table]({ui.artifact_link(eid, pid, html)})")
    if png:
        parts.append(f"[pareto.png]({ui.artifact_link(eid, pid, png)})")
    if heat:
        parts.append(f"[priors heatmap]({ui.artifact_link(eid, pid, heat)})")
    return "Open: " + " · ".join(parts)


def _plot(facts: SearchFacts, prefix: str) -> str:
    png = facts.artifact("pareto.png", prefix)
    if not png:
        return ""
    return (f"### Pareto plot\n\n![{facts.metric_name} against trainable parameters; colour = {facts.cost_unit}; "
            f"frontier ringed; baselines labelled]({ui.artifact_file(facts.parent_run_id, png)})")


def _trial_rows(facts: SearchFacts, records: list[TrialRecord]) -> list[list[str]]:
    return [[_key(r.key), _score(r.score if r.status == R.COMPLETED else r.last_score), _int(r.trainable_params),
             _cost(r.compute_hours), "-" if r.lr is None else f"{r.lr:.2e}", r.baseline or "",
             r.status, f"[{r.trial_id}]({ui.run_link(facts.experiment_id, r.run_id)})"] for r in records]


def _frontier_section(facts: SearchFacts, records: list[TrialRecord], max_rows: int = MAX_ROWS,
                      marks: Marks = Marks()) -> str:
    front = sorted((r for r in records if marks.on_single_front(r)), key=lambda r: best_first(r.score, facts.sense))
    if not front:
        return "### Single-run Pareto frontier\n\nNo completed trial yet."
    head = ["placement", facts.metric_name, "trainable params", facts.cost_unit, "lr", "baseline", "status", "run"]
    eid, pid = facts.experiment_id, facts.parent_run_id
    more = (f"\n\n{len(front) - max_rows} more in [the single-run frontier view]"
            f"({ui.view_link(eid, pid, ui.SINGLE_FRONTIER)})."
            if len(front) > max_rows else "")
    compare = (f" [Compare them side by side]({ui.compare_link(eid, [r.run_id for r in front[:max_rows]])})."
               if len(front) > 1 else "")
    return (f"### Single-run Pareto frontier ({len(front)} of {len(records)} trials; one run each)\n\n"
            f"No other completed trial has a {word(facts.sense)} {facts.metric_name} with fewer trainable parameters "
            f"and less compute, each trial trained once (tag `{ui.PARETO_SINGLE_TAG}` = true).{compare}\n\n"
            + _table(head, _trial_rows(facts, front[:max_rows]), {1, 2, 3}) + more)


def _in_the_table(facts: SearchFacts, records: list[TrialRecord], marks: Marks) -> str:
    """Where the recommended trial is in the runs table (its run's name there, marked and first),
    and what the table's columns hold, with their units."""
    guide = (f"Columns: `score` is {facts.metric_name} on the validation split (one run); `score_mean`, `score_low`, "
             "`score_high`: its mean over seeds and 95% interval (clipped to the metric's range); `compute_hours` "
             f"in {facts.cost_unit}.")
    r = next((r for r in records if r.run_id == marks.recommended), None)
    if r is None:
        return guide
    return (f"In the runs table: **`{marks.name(r)}`**, tagged `{ui.RECOMMENDED_TAG}` = `true` and listed first "
            f"([all trials]({ui.view_link(facts.experiment_id, facts.parent_run_id)}) · "
            f"[its run]({ui.run_link(facts.experiment_id, r.run_id)})). " + guide)


def _confirmed_section(facts: SearchFacts, table: str, marks: Marks) -> str:
    eid, pid = facts.experiment_id, facts.parent_run_id
    stats = list(marks.seeds.values())
    notes = []
    if any(s.clipped for s in stats):
        notes.append("95% intervals are clipped to the metric's range")
    few = sorted({s.n for s in stats if s.few_seeds})
    if few:
        notes.append(f"an interval from {' or '.join(map(str, few))} seeds is too wide to mean much")
    compare = (f"[Compare them side by side]({ui.compare_link(eid, list(marks.seeds))}) · " if len(marks.seeds) > 1
               else "")
    return ("### Frontier confirmed over seeds\n\n"
            f"Placements retrained over seeds; ★: on the Pareto frontier over seed means (tag "
            f"`{ui.PARETO_CONFIRMED_TAG}` = true). {compare}"
            f"[the frontier view]({ui.view_link(eid, pid, ui.FRONTIER)})\n\n"
            + table + ("\n\n*" + "; ".join(notes) + ".*" if notes else ""))


def _baselines_section(facts: SearchFacts, records: list[TrialRecord]) -> str:
    base = [r for r in records if r.baseline][:MAX_ROWS]
    if not base:
        return ""
    head = ["placement", facts.metric_name, "trainable params", facts.cost_unit, "lr", "baseline", "status", "run"]
    return ("### Baselines (hand-crafted, fitted to the budget, trained first)\n\n"
            + _table(head, _trial_rows(facts, base), {1, 2, 3})
            + f"\n\nA stopped ({R.PRUNED}) trial shows its last epoch's {facts.metric_name}.")


def _order(values, *, low_first: bool) -> list[int]:
    known = [i for i, v in enumerate(values) if v is not None]
    return sorted(known, key=lambda i: values[i] if low_first else -values[i])


def _priors_section(facts: SearchFacts) -> str:
    s, sampler = facts.scores, facts.params.get("sampler", "?")
    if s is None:
        return f"### Priors\n\nNone computed; sampler `{sampler}`."
    kinds = lambda order: ", ".join(s.kinds[i] for i in order)  # noqa: E731
    layers = lambda order: ", ".join(str(i) for i in order)  # noqa: E731
    rows = [["PLoP: normalised feature norm (low first)", "module kinds",
             kinds(_order(s.kind_nfn(), low_first=True))],
            ["CKA: 1 - CKA of a block's input and output (high first)", "layers",
             layers(_order(list(s.cka.importance), low_first=False))],
            ["activation norm (high first)", "layers", layers(_order(list(s.act.per_layer), low_first=False))]]
    if s.grad is not None:
        grad = [s.grad.per_kind.get(k) for k in s.kinds]
        rows.append(["gradient sensitivity (high first)", "module kinds", kinds(_order(grad, low_first=False))])
    return (f"### Priors (sampler `{sampler}`)\n\nFrom one forward pass over {s.n_examples} calibration examples "
            f"({s.n_tokens:,} tokens; CKA pooling `{s.pooling}`). They order the baselines and the sampler's "
            "first draws.\n\n" + _table(["prior", "ranks", "adapt first"], rows))


def _search_section(facts: SearchFacts, records: list[TrialRecord], status: str) -> str:
    p = facts.params
    counts = {s: sum(r.status == s for r in records) for s in (R.COMPLETED, R.PRUNED, R.FAILED, R.RUNNING)}
    try:
        full, budget = float(p["full_adapter_params"]), float(p["budget"])
        allowed = (f"{budget:g} x {full:,.0f} adapter parameters (every site at rank {p.get('r_ref', '?')}) "
                   f"= at most {int(budget * full):,}")
    except (KeyError, ValueError):
        allowed = f"{p.get('budget', '?')} (not all of it logged)"
    lines = [f"- model `{p.get('model', '?')}`, data `{p.get('data', '?')}`, metric {facts.metric_name} "
             "on the validation split",
             f"- budget {allowed}",
             f"- {len(records)} of {p.get('trials', '?')} trials: {counts[R.COMPLETED]} completed, {counts[R.PRUNED]} "
             f"stopped early by ASHA, {counts[R.FAILED]} failed"
             + (f", {counts[R.RUNNING]} running" if counts[R.RUNNING] else ""),
             f"- search run status: {status}; experiment `{facts.experiment}`",
             "- a key `r4 q[1-5] o[1-5]` reads: rank-4 adapters on the q and o modules of layers 1 to 5"]
    return "### What was searched\n\n" + "\n".join(lines)


def deploy_command(tracking_uri: str, run_id: str, output: str | None = None) -> str:
    args = ["python", "search/deploy.py", "--run-id", run_id, "--tracking-uri", tracking_uri]
    return shlex.join(args + (["--output", output] if output else []))


def _deploy_target(records: list[TrialRecord], run_id: str | None, sense: str = "max") -> TrialRecord | None:
    """The trial to deploy: the confirmed recommendation's run where there is one, else the
    best single-run score."""
    return next((r for r in records if r.run_id == run_id), None) or recommended(records, sense)


def _deploy_section(facts: SearchFacts, records: list[TrialRecord], run_id: str | None = None) -> str:
    best = _deploy_target(records, run_id, facts.sense)
    if best is None:
        return ""
    name = default_model_name(facts.experiment)
    return ("### Deploy\n\nExport the recommended trial (for another, use its run id, on its page), from the "
            f"project's folder:\n\n```bash\n{deploy_command(facts.tracking_uri, best.run_id, 'my-adapter')}\n```\n\n"
            "`my-adapter/` then loads with `peft.PeftModel.from_pretrained(base_model, \"my-adapter\")` (its "
            f"README.txt says how to build the base model). `deploy.py` also registers it as `models:/{name}@{ALIAS}` "
            f"([{name} in the model registry]({ui.model_link(name)})).")


def _fit(parts: list[str], limit: int) -> str:
    """Sections joined in order while they fit MLflow's limit; the first is always kept."""
    text = parts[0]
    for i, part in enumerate(parts[1:], start=1):
        if len(text) + len(part) + 2 > limit - 80:
            return text + f"\n\n*{len(parts) - i} more sections cut to fit MLflow's limit: see the artifacts.*"
        text += "\n\n" + part
    return text


def search_note(facts: SearchFacts, records: list[TrialRecord], *, status: str = "FINISHED",
                recommendation: str | None = None, confirmed_table: str | None = None,
                recommended_run_id: str | None = None, artifact_prefix: str = "", brief: bool = False,
                limit: int = RUN_NOTE_LIMIT, marks: Marks = Marks()) -> str:
    """The search's description in Markdown. `recommendation` (Markdown) replaces the single-seed one;
    `confirmed_table` (a Markdown table of the frontier retrained over seeds) goes before the
    single-seed frontier; `recommended_run_id` (the confirmed pick's trial run) is the one the deploy
    command exports; `artifact_prefix` picks the plots the caller just logged; `marks`: what the
    end of the search tagged (the recommended run's name in the runs table, the two frontiers).

    `brief`: the experiment's version, shown above the runs table in a box that does not scroll:
    the recommendation, the links, the frontier's first rows and the deploy command; the rest
    (baselines, plot, priors, what was searched) is on the search run, which it links."""
    head = recommendation or default_recommendation(facts, records)
    if status != "FINISHED":
        head = f"**Search {status.lower()}**, so far: " + head
    parts = [head]
    if recommendation is None and recommended(records, facts.sense) is not None:
        parts.append(_caveat(records, facts.sense))
    parts.append(_in_the_table(facts, records, marks))
    links = _links(facts, artifact_prefix)
    if brief:
        links += f" · [**the search's full summary**]({ui.run_link(facts.experiment_id, facts.parent_run_id)})"
    parts.append(links)
    if confirmed_table:
        parts.append(_confirmed_section(facts, confirmed_table, marks))
    if brief:
        best = _deploy_target(records, recommended_run_id, facts.sense)
        parts += [_frontier_section(facts, records, max_rows=5, marks=marks),
                  f"Deploy it: `{deploy_command(facts.tracking_uri, best.run_id, 'my-adapter')}`" if best else ""]
    else:
        parts += [_frontier_section(facts, records, marks=marks), _baselines_section(facts, records),
                  _deploy_section(facts, records, recommended_run_id), _plot(facts, artifact_prefix), _priors_section(facts),
                  _search_section(facts, records, status)]
    return _fit([p for p in parts if p], limit)


def running_note(experiment_id: str, parent_run_id: str) -> str:
    """The description while the search runs (replaced when it ends)."""
    return (f"**Search running**: trials appear in [all trials, best first]"
            f"({ui.view_link(experiment_id, parent_run_id)}) as they finish. When it ends, this description "
            "gives the recommended placement, the Pareto frontier, the baselines and the commands to deploy a trial.")


def _fronts(facts: SearchFacts, r: TrialRecord, marks: Marks) -> str:
    """Which frontiers a completed trial is on, and its seed statistics when it was confirmed."""
    out = ("**On the single-run Pareto frontier.**" if marks.on_single_front(r)
           else "Not on the single-run Pareto frontier (another completed trial beats it on every objective).")
    stats: SeedStats | None = marks.seeds.get(r.run_id)
    if stats is not None:
        out += (f" Confirmed over seeds: {facts.metric_name} {stats.describe()}; "
                + ("**on the Pareto frontier over seed means.**" if r.run_id in marks.confirmed_front
                   else "not on the Pareto frontier over seed means."))
    if r.run_id == marks.recommended:
        out = f"**Recommended** (tag `{ui.RECOMMENDED_TAG}` = true). " + out
    return out


def trial_note(facts: SearchFacts, r: TrialRecord, marks: Marks = Marks()) -> str:
    """A trial run's description: what it reached, whether it is recommended and on which frontier,
    how to deploy it."""
    eid, metric = facts.experiment_id, facts.metric_name
    who = f"**{_key(r.key)}** (trial {r.trial_id}" + (f", the `{r.baseline}` baseline" if r.baseline else "") + ")"
    back = (f"[The search's summary]({ui.run_link(eid, facts.parent_run_id)}) · "
            f"[all trials]({ui.view_link(eid, facts.parent_run_id)}) · "
            f"[the Pareto frontier]({ui.view_link(eid, facts.parent_run_id, ui.FRONTIER)})")
    if r.status == R.COMPLETED:
        adapters = (f" ({_int(r.adapter_params)} in the LoRA adapters, the rest the classifier head)"
                    if r.adapter_params else "")
        front = _fronts(facts, r, marks)
        return (f"{who}: {metric} **{_score(r.score)}** after {r.epochs} epochs; {_int(r.trainable_params)} trainable "
                f"parameters{adapters}; {_cost(r.compute_hours)} {facts.cost_unit}. {front}\n\n"
                f"Deploy it:\n\n```bash\n{deploy_command(facts.tracking_uri, r.run_id)}\n```\n\n{back}")
    if r.status == R.PRUNED:
        what = f"Stopped early by ASHA after epoch {r.epochs} ({metric} then {_score(r.last_score)}): not deployable."
    elif r.status == R.FAILED:
        what = f"Failed: {r.error or 'no message'}"
    else:
        what = f"Did not finish (status {r.status})."
    return f"{who}: {what}\n\n{back}"


# ---- writing -------------------------------------------------------------------------------------
def publish_running(client, experiment_id: str, parent_run_id: str) -> None:
    note = running_note(experiment_id, parent_run_id)
    client.set_tag(parent_run_id, NOTE_TAG, note)
    client.set_experiment_tag(experiment_id, NOTE_TAG, note)


def publish_notes(client, parent_run_id: str, records: list[TrialRecord], tracking_uri: str, *,
                  status: str = "FINISHED", artifact_prefix: str = "", recommendation: str | None = None,
                  confirmed_table: str | None = None, recommended_run_id: str | None = None,
                  marks: Marks = Marks()) -> str:
    """Describe the search on its run (in full) and its experiment (`brief`), and each trial on its
    run; return the search run's Markdown. `records` carry their `pareto` flags and `marks` what
    else the end of the search tagged (`search.phases.publish.publish_frontier`)."""
    facts = read_facts(client, parent_run_id, tracking_uri)
    extra = dict(status=status, recommendation=recommendation, confirmed_table=confirmed_table,
                 recommended_run_id=recommended_run_id, artifact_prefix=artifact_prefix, marks=marks)
    note = search_note(facts, records, **extra)
    client.set_tag(parent_run_id, NOTE_TAG, note)
    client.set_experiment_tag(facts.experiment_id, NOTE_TAG, search_note(facts, records, brief=True, **extra))
    client.set_experiment_tag(facts.experiment_id, ui.EXPERIMENT_KIND_TAG, ui.EXPERIMENT_KIND)
    for r in records:
        client.set_tag(r.run_id, NOTE_TAG, trial_note(facts, r, marks)[:RUN_NOTE_LIMIT])
    return note


# ---- the model registry (search/deploy.py) ---------------------------------------------------------
def _load_lines(info: dict, uri: str) -> str:
    labels = (", ".join(map(str, info["labels"])) if info.get("labels")
              else f"{info.get('num_labels')} (names not logged)")
    path = f" (`{info['base_model_path']}`)" if info.get("base_model_path") else ""
    command = deploy_command(info["tracking_uri"] or "<tracking uri>", info["run_id"], "my-adapter")
    return (f"Base model `{info['base_model']}`{path}"
            + f"; labels: {labels}.\n\nLoad it:\n\n```bash\n"
            f"mlflow artifacts download -u {shlex.quote(uri)} -d my-adapter   # with MLFLOW_TRACKING_URI set\n```\n\n"
            "```python\nfrom peft import PeftModel\n"
            "model = PeftModel.from_pretrained(base_model, \"my-adapter\").eval()  # the search's base model\n```\n\n"
            f"From this project's folder, `{command}` writes the same files plus `deploy.json` and `README.txt`, "
            "and `search.tracking.export.load_deployed(\"my-adapter\")` "
            "rebuilds the base model and loads the adapter.")


def _trial_summary(info: dict) -> str:
    eid = info.get("experiment_id", "")
    cost = f", {_cost(info['compute_hours'])} {info['cost_unit']}" if info.get("compute_hours") is not None else ""
    # Plain text first: the registry's versions table shows the start of the description unrendered.
    return (f"Placement {info['placement_key']}: LoRA adapters and the trained classifier head of trial "
            f"{info['trial_id']} of the placement search `{info['experiment']}`: {info['metric_name']} "
            f"**{_score(info['score'])}**, {_int(info['trainable_params'])} trainable parameters{cost}. "
            f"[Trial run]({ui.run_link(eid, info['run_id'])}) · "
            f"[the search]({ui.run_link(eid, info['parent_run_id'])})")


def model_version_note(info: dict, name: str, version: int | str) -> str:
    """A registered model version's description: which placement it holds and how to load it."""
    return _trial_summary(info) + "\n\n" + _load_lines(info, f"models:/{name}/{version}")


def registered_model_note(info: dict, name: str, version: int | str, alias: str) -> str:
    """The registered model's description, rewritten at each deploy: what the alias points at."""
    eid = info.get("experiment_id", "")
    return (f"LoRA adapters picked from the Pareto frontier of the placement search `{info['experiment']}` "
            f"([all its trials]({ui.view_link(eid, info['parent_run_id'])})). The alias **`{alias}`** points at "
            f"version {version}: " + _trial_summary(info) + "\n\nEach version's description names its placement.\n\n"
            + _load_lines(info, f"models:/{name}@{alias}"))
