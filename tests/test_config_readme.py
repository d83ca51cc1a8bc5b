"""The README's config table states what the config holds: every key once, with its default.

The table (README.md, "## Configuration") has one row per key or group of keys. Column 1: the keys
in backticks, comma-separated, then the flag that sets them, if any, in parentheses. Column 2: one
default per key, in the same order, comma-separated: a TOML value (0.5, true, [2, 4], 1e-4) or a
string in backticks (`minilm`; the empty string is `""`), optionally followed by "(V in NAME.toml)",
what the shipped config NAME sets. Column 3: the meaning; a key with named values
(`trainables.choices`) names every one of them in backticks on its row.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from pathlib import Path

import pytest

from trainables.choices import CONFIG_CHOICES, CONFIG_NAMED_VALUES
from trainables.config import CONFIG_DIR, Config

README = Path(__file__).resolve().parent.parent / "README.md"
HEADER = "| key | default | meaning |"
NOTE = re.compile(r"\((?P<value>.+) in (?P<config>[\w-]+)\.toml\)")


def _split_top(text: str, sep: str = ",") -> list[str]:
    """`text` split at `sep` outside brackets, parentheses and backticks."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == "`":
            quoted = not quoted
        elif not quoted and ch in "[(":
            depth += 1
        elif not quoted and ch in "])":
            depth -= 1
        elif ch == sep and not quoted and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def _value(text: str):
    """A default as the table writes it: `string` (`""` = empty), or a TOML value."""
    if text.startswith("`") and text.endswith("`"):
        inner = text[1:-1]
        return "" if inner == '""' else inner
    return tomllib.loads(f"v = {text}")["v"]


def _rows(readme: str) -> list[tuple[list[str], list[str], str, str]]:
    """(keys, flags, default cell, meaning cell) for each row of the config table."""
    lines = readme.splitlines()
    start = lines.index(HEADER) + 2  # past the header and its --- line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        first, default, meaning = [cell.strip() for cell in line.strip().strip("|").split("|", 2)]
        names = re.findall(r"`([^`]+)`", first)
        rows.append(([n for n in names if not n.startswith("--")], [n for n in names if n.startswith("--")],
                     default, meaning))
    return rows


def _defaults() -> dict[str, tuple[object, type]]:
    """Every config key -> (its default, its type)."""
    hints = typing.get_type_hints(Config)
    out = {}
    for section in dataclasses.fields(Config):
        cls = hints[section.name]
        types = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out[f"{section.name}.{f.name}"] = (getattr(cls(), f.name), types[f.name])
    return out


def _same(stated, default, typ) -> bool:
    if typ is float:  # 0 and 0.0 state the same float
        return type(stated) in (int, float) and not isinstance(stated, bool) and stated == default
    return type(stated) is type(default) and stated == default


def check_table(readme: str) -> list[str]:
    """Every way the table disagrees with the config, as messages (empty when it agrees)."""
    from search.cli import _FLAG_KEYS
    from search.run import build_parser

    defaults, problems, seen = _defaults(), [], []
    flag_dest = {s: a.dest for a in build_parser()._actions for s in a.option_strings}
    for keys, flags, cell, meaning in _rows(readme):
        unknown = [k for k in keys if k not in defaults]
        problems += [f"README row names {k!r}, which is not a config key" for k in unknown]
        seen += keys
        stated = _split_top(cell)
        if len(stated) != len(keys):
            problems.append(f"README row {keys}: {len(stated)} defaults for {len(keys)} keys: {cell!r}")
            continue
        for key, text in zip(keys, stated):
            if key in unknown:
                continue
            default, typ = defaults[key]
            note = NOTE.search(text)
            text = NOTE.sub("", text).strip()
            try:
                value = _value(text)
            except tomllib.TOMLDecodeError:
                problems.append(f"README: {key}'s default {text!r} is neither a TOML value nor a `string`")
                continue
            if not _same(value, default, typ):
                problems.append(f"README: {key}'s default is {text!r}, the config's is {default!r}")
            if note:
                section, name = key.split(".")
                shipped = tomllib.loads((CONFIG_DIR / f"{note['config']}.toml").read_text())
                if not _same(_value(note["value"]), shipped.get(section, {}).get(name), typ):
                    problems.append(f"README: {key} says {note['value']} in {note['config']}.toml, which sets "
                                    f"{shipped.get(section, {}).get(name)!r}")
            for name in {**CONFIG_CHOICES, **CONFIG_NAMED_VALUES}.get(key, ()):
                if f"`{name}`" not in meaning:
                    problems.append(f"README: {key}'s meaning does not name `{name}`")
        for flag in flags:
            if _FLAG_KEYS.get(flag_dest.get(flag)) not in keys:
                problems.append(f"README: {flag} does not set {', '.join(keys)}")
    problems += [f"README: {k} has {seen.count(k)} rows" for k in sorted(set(seen)) if seen.count(k) > 1]
    problems += [f"README: {k} has no row" for k in defaults if k not in seen]
    return problems


def test_the_readme_config_table_states_every_key_and_its_default():
    assert check_table(README.read_text()) == []


@pytest.mark.parametrize("change, expected", [
    (("| `search.r_ref` | 8 |", "| `search.r_ref` | 9 |"), "search.r_ref's default is '9'"),
    (("| `search.r_ref` | 8 |", "| `search.nope` | 8 |"), "'search.nope', which is not a config key"),
    (("| `train.precision` | `auto` | `auto` (bf16", "| `train.precision` | `auto` | auto (bf16"),
     "train.precision's meaning does not name `auto`"),
    (("64 (32 in default.toml)", "64 (30 in default.toml)"), "model.max_length says 30 in default.toml"),
    (("| `search.max_failures` | 1 |", "| `search.max_failures`, `search.trials` | 1, 12 |"),
     "search.trials has 2 rows"),
    (("`search.seed` (`--seed`)", "`search.seed` (`--trials`)"), "--trials does not set search.seed"),
    (("| `simulation.noise` | 0.005 |", "| `simulation.epoch_s` | 0.005 |"), "simulation.noise has no row"),
])
def test_the_check_fails_on_a_wrong_table(change, expected):
    readme = README.read_text()
    old, new = change
    assert old in readme
    problems = check_table(readme.replace(old, new, 1))
    assert any(expected in p for p in problems), problems
