"""The engine's two errors, split by who broke the rules (h11's ``_util.py``).

``ProtocolViolation``: the peer sent something PS3.8 does not allow. By the time it is
raised the engine has already taken the table's action (AA-1, AA-7 or AA-8): the A-ABORT
PDU to send is in ``abort_pdu`` and the machine waits in Sta13 for the connection to close.
The shell writes those bytes, logs one line with ``source``, ``reason`` and the message, and
closes: no traceback, the peer's garbage is not our bug.

``LocalProtocolError``: our own caller asked for something the state does not allow
(sending a C-STORE before the association is accepted, a second request beyond the
asynchronous operations window). The state is unchanged; it is a bug in the shell.
"""

from __future__ import annotations

# A-ABORT source (PS3.8 9.3.8)
SOURCE_SERVICE_USER = 0x00
SOURCE_SERVICE_PROVIDER = 0x02

# A-ABORT reasons from the service provider (PS3.8 9.3.8)
REASON_NOT_SPECIFIED = 0x00
REASON_UNRECOGNIZED_PDU = 0x01
REASON_UNEXPECTED_PDU = 0x02
REASON_UNRECOGNIZED_PARAMETER = 0x04
REASON_UNEXPECTED_PARAMETER = 0x05
REASON_INVALID_PARAMETER = 0x06


class ProtocolViolation(Exception):
    """The peer broke PS3.8 or PS3.7; the association is aborted with ``source``/``reason``."""

    def __init__(self, message: str, reason: int = REASON_NOT_SPECIFIED,
                 source: int = SOURCE_SERVICE_PROVIDER, abort_pdu: bytes = b"") -> None:
        super().__init__(message)
        self.reason = reason
        self.source = source
        self.abort_pdu = abort_pdu

    def __str__(self) -> str:
        return f"{self.args[0]} (A-ABORT source {self.source}, reason {self.reason})"


class LocalProtocolError(Exception):
    """Our caller used the engine out of turn; nothing was sent and the state is unchanged."""
