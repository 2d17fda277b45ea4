"""Serving: the registered pyfunc model (model.py, logged as the model's own code), the version
holder that follows `models:/<name>@champion` (holder.py), the prediction recorder
(recorder.py) and the `pipeline serve` command's ASGI server (server.py).

Nothing is imported here: model.py must load where this package is not installed, and the
server's modules pull in uvicorn and MLflow's scoring app only when a server starts.
"""
