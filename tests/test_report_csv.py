"""A trials CSV (`analysis.report.write_rows`) reads back as the records it was written from
(`read_rows`: what `benchmarks.real_task` compares searches with)."""

from analysis.report import read_rows, write_rows
from trainables.record import TrialRecord


def test_a_trials_csv_reads_back_as_its_records(tmp_path):
    records = [
        TrialRecord("t1", "r1", "r4 q[0-5]", rank=4, lr=1e-3, status="completed", score=0.8, trainable_params=1234,
                    adapter_params=1000, compute_hours=0.01, epochs=3, baseline="all", pareto=True, seed=0),
        TrialRecord("t2", "", "r2 k[1]", status="pruned", epochs=1, confirms="t1", warm_start="run9",
                    within_budget=False),
    ]
    path = tmp_path / "trials.csv"
    write_rows(records, path)
    back = read_rows(path)
    assert back == records  # the fields the CSV holds, typed; the others are at their defaults here
    assert isinstance(back[0].trainable_params, int) and back[1].score is None and back[1].run_id == ""
