"""The cluster-scale benchmark in small (benchmarks/cluster_scale.py): 60 simulated trials, 16 at
once, on a loopback Ray cluster that declares 16 GPUs, with the real driver, searcher, ASHA, MLflow
tracker and Optuna study. The numbers depend on the machine; the stores must agree whatever they are.
"""

import argparse

import pytest

from tests.conftest import stop_cluster


@pytest.mark.slow
def test_a_small_simulated_sweep_leaves_every_store_in_step(tmp_path):
    from benchmarks.cluster_scale import LoopbackCluster, one_point

    args = argparse.Namespace(concurrent=16, epoch_s=1.0, seed=0, label="test", min_free_gb=1.0, extra_asks=2)
    cluster = LoopbackCluster(nodes=1, gpus_per_node=16, root=tmp_path)
    try:
        cluster.start()
        r = one_point(cluster, tmp_path, 60, "sqlite", args)
    finally:
        stop_cluster(cluster)
    inv = r["invariants"]
    assert inv["problems"] == []
    # every trial in MLflow once, the study's trial count equal to Tune's, nothing left RUNNING
    assert inv["tune_trials"] == inv["mlflow_trial_runs"] == inv["study_trials"] == 60
    assert "RUNNING" not in inv["study_states"] and "WAITING" not in inv["study_states"]
    assert "running" not in inv["mlflow_statuses"]
    # the probes saw the whole search
    assert r["trials"] == 60 and r["ask_s_all"]["n"] >= 60 and r["ask_s_after"]["n"] == 2
    assert r["hook_ms"]["on_trial_complete"]["n"] == 60
    assert r["driver_rss_mb"]["peak"] > 0 and r["wall_s"] > r["ideal_s"] > 0
