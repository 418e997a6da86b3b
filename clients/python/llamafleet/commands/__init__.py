"""Sub-command groups of the ``llamafleet`` CLI; each module has ``register(subparsers)``."""

import ipaddress


class UserError(Exception):
    """Ends the command with exit code 2 and the message on one line (no traceback)."""


def loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (a server bound there needs no key)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
