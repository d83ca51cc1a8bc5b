"""What proposes placements: the define-by-run proposal, the samplers (prior, TPE, random) and the
Optuna study they live in. Optuna only: nothing here imports Ray, so the offline replays and the
product share the same ask / tell loop (`search.sampling.offline`)."""
