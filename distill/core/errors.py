"""The three kinds of failure a stage reports, mapped to exit codes by the CLI."""

EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_GATE = 0, 1, 2, 3


class UserError(Exception):
    """Bad input from the user: a path, a config value, a malformed file. Exit code 2.

    The message is shown as one line, so it must name the file, line or field at fault.
    """


class GateFailed(Exception):
    """A quality gate (eval thresholds) failed. Exit code 3; outputs are still written."""


def one_line(message: object) -> str:
    return " ".join(str(message).split())
