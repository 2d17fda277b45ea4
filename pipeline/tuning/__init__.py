"""`pipeline tune`: an Optuna study whose trials are DVC experiments run by DVC's own queue.

Optuna proposes each trial's params (ask), `dvc exp run --queue -S ...` and `dvc queue start`
run it as an experiment of the project (so `dvc exp show` lists it and `dvc exp apply` brings it
back), and the trial's validation figure goes back to the study (tell). The test split never
decides: the figures are cut down to their val_ keys before anything reads them.

- space.py: tune.space as Optuna distributions, and a trial's params as `-S key=value`;
- figures.py: the val figure a trial is worth (pure; test figures only for the winner's line);
- trials.py: the DVC side: queue, start, wait, read, stop the queue's workers;
- search.py: the study: create or resume, ask, run, tell, the summary;
- plots.py: reports/tune/: history and importance plots, trials.csv, best.json.
"""
