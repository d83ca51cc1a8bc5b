"""Ray Tune adapters: the searcher that asks the study for placements, early stopping (ASHA by
size), the cost stopper, the tracking callback that records every trial in MLflow, and whether a
dead driver's Tune run can be restored."""
