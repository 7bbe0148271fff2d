"""The one exception type for problems the user can fix (bad checkpoint, data file, option).

Command-line tools print its message and exit with status 2, without a traceback: the message
already names the file (and line) and says what to do. Anything else is a bug and keeps its
traceback.
"""


class EvalError(ValueError):
    """Invalid input to the eval tools; the message names the problem (file, line) and the fix."""


def run_cli(parser, body, argv=None) -> int:
    """Parse, set up logging, run `body(args)`; an EvalError becomes `error: ...` and exit status 2."""
    import logging
    import sys

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("eval").setLevel(logging.INFO)
    try:
        return body(args)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
