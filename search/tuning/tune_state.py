"""Whether a Tune experiment a dead driver left can be restored soundly.

Where it sits: explore and confirm each run one Tune experiment and, on --resume, restore it from
its folder. `Tuner.can_restore` only looks for `tuner.pkl`, which the Tuner writes when it is
built, before `fit()` saves any experiment state. Restored from such a folder, Tune finds no state,
logs "Restarting experiment" and starts over from what `tuner.pkl` holds, which has neither the
param space (a grid of confirmation jobs: every trial's config is empty) nor, in Ray 2.60, the
`num_samples` (the search runs 1 trial). So a phase restores only when the newest experiment state
is whole and its search algorithm's state from the same save is there too; otherwise it starts a
new Tune run from what the stores hold (MLflow and the Optuna study).
"""

from __future__ import annotations

import fnmatch
import json
import pickletools

import pyarrow.fs
from ray.tune.execution.tune_controller import TuneController
from ray.tune.search import BasicVariantGenerator, SearchGenerator

TUNER_FILE = "tuner.pkl"
# The file a search algorithm writes last in each save (after the experiment state).
SEARCHER_STATE = SearchGenerator.CKPT_FILE_TMPL  # explore: a Searcher wrapped by Tune
GRID_STATE = BasicVariantGenerator.CKPT_FILE_TMPL  # confirm: a grid over jobs


def restorable(path: str, search_state: str) -> bool:
    """True when the Tune experiment at `path` (a folder or a storage URI) has a whole `tuner.pkl`,
    a newest experiment state that reads as JSON, and the `search_state` file (a `*_STATE`
    template above) of that same save."""
    fs, root = pyarrow.fs.FileSystem.from_uri(path)
    try:
        names = {info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(root))}
    except (FileNotFoundError, NotADirectoryError):
        return False
    states = fnmatch.filter(names, TuneController.CKPT_FILE_TMPL.format("*"))
    if TUNER_FILE not in names or not states:
        return False
    newest = max(states)  # Tune restores the newest one (its name holds the save's timestamp)
    prefix, suffix = TuneController.CKPT_FILE_TMPL.split("{}")
    session = newest[len(prefix):-len(suffix)]  # every file of one save carries its session string
    if search_state.format(session) not in names:
        return False  # killed between the two writes of a save
    try:  # both are written in place: a driver killed mid-write leaves one cut short
        with fs.open_input_stream(f"{root.rstrip('/')}/{newest}") as f:
            json.loads(f.readall())
        with fs.open_input_stream(f"{root.rstrip('/')}/{TUNER_FILE}") as f:
            _whole_pickle(f.readall())
    except ValueError:
        return False
    return True


def _whole_pickle(data: bytes) -> None:
    """Raise ValueError unless `data` is one whole pickle (read opcode by opcode, nothing loaded)."""
    for _ in pickletools.genops(data):  # ValueError at the end of a pickle cut short
        pass
