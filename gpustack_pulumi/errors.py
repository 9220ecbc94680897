"""Errors of the components' arguments (outside the components package, so pools import it without cycles)."""


class ComponentArgsError(ValueError):
    """A component argument is wrong: the message names the argument and the fix. Raised before anything is
    registered, so nothing is half-created."""
