"""An MLOps pipeline for convolutional image classifiers (DVC stages, MLflow tracking)."""
