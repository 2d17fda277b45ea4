"""What each network sees (Chollet's Deep Learning with Python, 5.4): first-layer filters,
activation maps, filter patterns and Grad-CAM heatmaps, on the TensorFlow and JAX backends.

graph.py finds layers and cuts models at them (public functional API), gradients.py is the only
backend-specific code, figures.py draws the PNGs.
"""
