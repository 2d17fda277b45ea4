"""What each network sees (Chollet's Deep Learning with Python, 5.4): first-layer filters,
activation maps, filter patterns and Grad-CAM heatmaps, on the TensorFlow and JAX backends.

graph.py finds and cuts at layers of nested models, gradients.py is the only backend-specific
code, figures.py draws the PNGs.
"""
