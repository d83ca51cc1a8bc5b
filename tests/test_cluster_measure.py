"""The cluster benchmark's time accounting (benchmarks/cluster_measure.py) on hand-made traces."""

from benchmarks.cluster_measure import trial_timing, warm_up_end, zero_overhead_schedule


def _trace(pid, start, epoch_s, reports, end):
    return {"pid": pid, "start": start, "epoch_s": epoch_s, "reports": reports, "end": end}


def test_the_no_overhead_schedule_counts_the_tail():
    # three trials of 10 s on two slots: 15 s of simulated time per slot, but the third trial runs
    # alone after the first two, so no schedule finishes before 20 s
    traces = [_trace(1, 0.0, 10.0, [(10.0, 10.0)], 10.0), _trace(2, 0.0, 10.0, [(10.0, 10.0)], 10.0),
              _trace(1, 10.0, 10.0, [(20.0, 20.0)], 20.0)]
    assert zero_overhead_schedule(traces, 2) == 20.0
    timing = trial_timing(traces, 2)
    assert timing["ideal_s"] == 15.0 and timing["schedule_s"] == 20.0


def test_the_schedule_starts_trials_in_their_order_on_the_first_free_slot():
    # a long trial then two short ones on two slots: the short ones share the second slot
    traces = [_trace(1, 0.0, 10.0, [(0, 0)] * 3, 30.0), _trace(2, 1.0, 10.0, [(0, 0)], 11.0),
              _trace(2, 12.0, 5.0, [(0, 0)] * 2, 22.0)]
    assert zero_overhead_schedule(traces, 2) == 30.0
    assert zero_overhead_schedule(traces, 1) == 30.0 + 10.0 + 10.0


def test_waits_after_the_warm_up_leave_out_the_cold_start():
    # two slots; the first two trials start cold and wait 5 s after their first report (the
    # machine busy starting workers); the third, on a warm worker, waits 0.1 s per report
    traces = [_trace(1, 0.0, 10.0, [(10.0, 15.0), (25.0, 25.1)], 25.1),
              _trace(2, 0.0, 10.0, [(12.0, 17.0)], 17.0),
              _trace(2, 17.0, 10.0, [(27.0, 27.1), (37.1, 37.2)], 37.2)]
    assert warm_up_end(traces, 2) == 12.0
    timing = trial_timing(traces, 2)
    assert timing["warm_up_s"] == 12.0
    assert timing["steady_report_wait_s"]["n"] == 4  # the reports made at or after 12 s
    lost = 5.0 + 0.1 + 0.1 + 0.1 + 5.0
    assert abs(timing["wait_share"] - lost / (25.1 + 17.0 + 20.2)) < 1e-9
    steady_lost = 5.0 + 0.1 + 0.1 + 0.1
    steady_busy = (25.1 - 12.0) + (17.0 - 12.0) + 20.2
    assert abs(timing["steady_wait_share"] - steady_lost / steady_busy) < 1e-9
