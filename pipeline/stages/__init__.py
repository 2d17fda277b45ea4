"""DVC entry points, one module per stage: `python -m pipeline.stages.<stage>`.

TensorFlow's C++ start-up chatter is silenced here, before any stage imports Keras; real
failures still surface as Python exceptions.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
