"""MLflow tracking, in two parts: `server` (the URI, a fast reachability check, git state; no
MLflow import, so a stage can fail in a second before Keras loads) and `runs` (the runs
themselves: tags, params, per-epoch metrics, artifacts and models, surviving a lost server)."""
