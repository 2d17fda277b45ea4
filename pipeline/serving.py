"""The served model: raw uint8 images in, class names and per-class probabilities out.

MLflow logs this file as the model's code ("models from code"), so a registered version loads
anywhere MLflow, Keras and pandas are installed, without this package. Its artifacts are the
Keras model (preprocessing included), the class names, in label order, and the training
manifest: the content digests of the images the model trained on, which the promotion gate
checks every later test split against.
"""

from __future__ import annotations

import json

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import set_model

try:
    from pipeline.models.outputs import class_probabilities
except ImportError:
    # Loaded where this package is not installed: MLflow put the model's code (logged with
    # `code_paths`, see registry.log_classifier) on sys.path.
    from outputs import class_probabilities

PREDICTED_CLASS = "predicted_class"
KERAS_MODEL_ARTIFACT = "keras_model"
CLASSES_ARTIFACT = "classes"
MANIFEST_ARTIFACT = "training_manifest"


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """A Keras classifier that answers in class names, as Hugging Face's id2label does."""

    def load_context(self, context) -> None:
        import keras

        self.model = keras.saving.load_model(context.artifacts[KERAS_MODEL_ARTIFACT])
        with open(context.artifacts[CLASSES_ARTIFACT]) as stream:
            self.classes = json.load(stream)
        # Versions registered before manifests existed have none: None, not an empty set.
        self.training_manifest = None
        manifest = context.artifacts.get(MANIFEST_ARTIFACT)
        if manifest:
            with open(manifest) as stream:
                self.training_manifest = {line.strip() for line in stream if line.strip()}

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        """One row per image: `predicted_class`, then one probability column per class name."""
        images = np.asarray(model_input)
        if images.dtype != np.uint8:
            if images.min() < 0 or images.max() > 255:
                raise ValueError("images must hold raw pixel values in 0..255 (uint8)")
            images = images.astype(np.uint8)
        probabilities = class_probabilities(self.model.predict(images, verbose=0))
        frame = pd.DataFrame(probabilities, columns=self.classes)
        frame.insert(0, PREDICTED_CLASS, [self.classes[i] for i in probabilities.argmax(axis=1)])
        return frame


set_model(ImageClassifier())
