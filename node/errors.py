"""The node's error tree, split by who broke the rules, each with a DICOM status hint.

Foreign exceptions (OSError, msgpack and pydicom errors) are translated into these at the
boundary where they happen, so an actor's loop only has to catch ``NodeError``: it logs,
answers with ``error.status`` and goes on. Anything else is a bug: the process exits non-zero
and supervisor restarts it.
"""

from __future__ import annotations

# DIMSE status codes used as hints (PS3.4 Annex B, PS3.7 Annex C).
STATUS_SUCCESS = 0x0000
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000


class NodeError(Exception):
    """Base of every error the node raises on purpose.

    ``status`` is the DIMSE status a response should carry when this error ends a request.
    """

    status: int = STATUS_PROCESSING_FAILURE

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class ConfigError(NodeError):
    """The configuration or the command line asks for something invalid (our user's fault)."""


class PeerError(NodeError):
    """The remote peer sent something that breaks the rules (the peer's fault)."""

    status = STATUS_CANNOT_UNDERSTAND


class DatasetError(PeerError):
    """A received dataset cannot be parsed or lacks what storing it needs."""


class PathError(PeerError):
    """Attribute values would build a path that is not safe inside the store."""

    status = STATUS_PROCESSING_FAILURE


class StorageError(NodeError):
    """Writing to the store or the index failed (our side, maybe transient)."""

    status = STATUS_OUT_OF_RESOURCES


class MessageError(NodeError):
    """A bus message of an unknown kind or schema version, or one that does not decode."""


class NotBuiltError(NodeError):
    """The user asked for a feature that is not built yet; the CLI says so and exits non-zero."""
