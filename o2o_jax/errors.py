"""The one exception type users see: launchers print its message as one line and exit non-zero."""


class O2OError(Exception):
  """A user-facing error whose message names the problem and the fix."""


class DatasetError(O2OError):
  """A dataset cannot be found, or its content is unusable."""


class RunDirError(O2OError):
  """A run directory conflicts with the requested run."""


class CheckpointError(O2OError):
  """A checkpoint is missing or cannot be restored."""


class Interrupted(O2OError):
  """SIGINT/SIGTERM arrived: a snapshot was saved and rerunning the same command resumes."""


class DivergenceError(O2OError):
  """Non-finite losses, Q-values or parameters during training."""
