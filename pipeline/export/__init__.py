"""Exports of a trained classifier to where users deploy it: ONNX (onnxruntime), TFLite
(LiteRT) and SavedModel (TensorFlow, TF Serving), each scored on the test split by its own
runtime and refused unless it answers as the Keras model does (pipeline.export.parity).

The modules: `formats` (names, files, tolerances; pure), `converters` (the TensorFlow-only
conversions), `runtimes` (each format's own runtime), `parity` (the comparison; pure) and
`exporter` (one export: convert, score, compare, write atomically).
"""
