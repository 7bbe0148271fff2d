"""The one exception type for problems the user can fix (bad checkpoint, data file, option).

Command-line tools print its message and exit with status 2, without a traceback: the message
already names the file (and line) and says what to do. Anything else is a bug and keeps its
traceback.
"""


class EvalError(ValueError):
    """Invalid input to the eval tools; the message names the problem (file, line) and the fix."""
