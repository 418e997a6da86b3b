"""Sub-command groups of the ``llamafleet`` CLI; each module has ``register(subparsers)``."""


class UserError(Exception):
    """Ends the command with exit code 2 and the message on one line (no traceback)."""
