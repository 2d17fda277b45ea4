"""Training: fit.py (seeds, optimizers, fitting) and strategies.py (the registry of strategies)."""
