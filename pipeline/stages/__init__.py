"""DVC entry points, one module per stage: `python -m pipeline.stages.<stage>`.

pipeline.entry is imported first, before any stage imports Keras or MLflow: it sets what they
read as they load and filters TensorFlow's native start-up banner (see pipeline.entry).
"""

import pipeline.entry  # noqa: F401
