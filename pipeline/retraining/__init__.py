"""One retraining cycle, as cron, a systemd timer or a CI schedule runs it (`pipeline retrain`):

    lock -> tracking -> detect -> prepare -> validate -> pipeline -> promote -> record

1. **lock** (lock.py): one cycle at a time per project. A second one exits at once (status
   75), naming the holder; a lock left by a killed cycle is taken over (the kernel drops a dead
   process's `flock`, so a lock file that can be locked is stale whatever it says).
2. **tracking**: the MLflow server answers, or the cycle stops in seconds.
3. **detect**: what starts the cycle (triggers.py): the dataset's source against the one last
   trained on (pipeline.datasets.fingerprint), a drift verdict of `pipeline monitor` that no
   cycle has acted on, or `--force`. With none of them the cycle ends here, successfully. With
   drift alone (no new labelled images) it writes a review queue of the served images that
   most need a label (review.py) instead of retraining on the same data, and ends.
4. **prepare**: `dvc repro split` (download and split the new data), keeping a copy of the
   previous prepared data.
5. **validate**: the data gate on the new data, with that copy as the drift reference.
6. **pipeline**: `dvc repro`, every strategy's run a child of this cycle's MLflow run.
7. **promote**: the promotion gate (the `promote` stage), forced when DVC found it up to date.
8. **record**: reports/retrain.json, and the cycle's own MLflow run, tagged `retrain`.

Steps 2 to 7 are in steps.py, the cycle that runs and records them in cycle.py, and the one
way a step runs a command (DVC, a stage) in commands.py. A failure at any step leaves the
`champion` alias where it was, records the failed step, and exits non-zero.
"""
