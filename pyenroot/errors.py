"""The one exception hierarchy of pyenroot.

The CLI renders every PyenrootError as `pyenroot: error: <message> (<reference>)`, an optional
`hint: ...` line, and exits with the class's exit code. Library code raises; it never prints or exits.
"""

from __future__ import annotations


class PyenrootError(Exception):
    """Base of every error a user can act on."""

    exit_code = 1
    reference = "error"

    def __init__(self, message: str, *, hint: str | None = None, reference: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if reference is not None:
            self.reference = reference

    def with_context(self, context: str) -> PyenrootError:
        """Return a copy of this error whose message is prefixed by `context`."""
        clone = type(self)(f"{context}: {self.message}", hint=self.hint, reference=self.reference)
        return clone


class UsageError(PyenrootError):
    """Bad command line or bad option value."""

    exit_code = 2
    reference = "usage"


class ConfigError(PyenrootError):
    """A settings file or configuration script is invalid."""

    reference = "config"


class RegistryError(PyenrootError):
    """Talking to an image registry failed (network, auth, missing image)."""

    reference = "registry"


class ImageError(PyenrootError):
    """An image is malformed, fails verification, or cannot be converted."""

    reference = "image"


class StorageError(PyenrootError):
    """Container storage (names, data path, cache) is in a bad state."""

    reference = "storage"


class RuntimeStartError(PyenrootError):
    """A container could not be started or joined."""

    reference = "start"

