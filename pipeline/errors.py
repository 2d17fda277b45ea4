"""The errors a user can cause and fix: the CLI prints them without a traceback."""


class PipelineError(Exception):
    """Bad input or a missing resource, with a message that says what to do."""


class ConfigError(PipelineError):
    """params.yaml (or a stage argument) names an unknown key or a bad value."""


class DataError(PipelineError):
    """A dataset file is missing, corrupt or inconsistent."""


class ValidationFailed(PipelineError):
    """The prepared data violates an expectation of the validate stage."""
