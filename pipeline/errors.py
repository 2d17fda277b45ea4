"""The errors a user can cause and fix: entry points print them without a traceback.

Domain modules raise the specific errors below in their own terms (an image size, a layer
name); only `pipeline.config` and the stages speak in params keys.
"""


class PipelineError(Exception):
    """Bad input or a missing resource, with a message that says what to do."""


class ConfigError(PipelineError):
    """params.yaml (or a stage argument) names an unknown key or a bad value."""


class DataError(PipelineError):
    """A dataset file is missing, corrupt or inconsistent."""


class ValidationFailed(PipelineError):
    """The prepared data violates an expectation of the validate stage."""


class ModelError(PipelineError):
    """A model cannot be built as asked: too many pooling blocks, an unknown layer."""


class TrackingUnavailable(PipelineError):
    """The MLflow tracking server or database does not answer."""


class RegistryError(PipelineError):
    """The model registry cannot do what was asked: no run to register, an unknown alias."""


class RetrainFailed(PipelineError):
    """A step of a retraining cycle failed; the served model was left where it was."""


class ExportError(PipelineError):
    """A model cannot be exported as asked, or its export failed its parity check."""
