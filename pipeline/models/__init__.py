"""Models: backbones.py (the backbone registry), builders.py (scratch architectures),
heads.py (classifier heads and the models assembled from them), preprocessing.py (layers)."""
