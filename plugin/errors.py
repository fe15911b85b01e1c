"""Exceptions shared by the core and the adapters."""


class InputError(ValueError):
    """Bad input (file, column or value): reported as one line, with a non-zero exit."""


class AbortRequested(RuntimeError):
    """The user (e.g. RELION's RELION_JOB_ABORT_NOW) asked the job to stop."""
