"""The association log pynetdicom's apps print, made from node/ul events (``nodectl echoscp``).

pynetdicom 3.0.4's echoscp logs, with -v, ``Accepting Association``, ``Received Echo
Request (MsgID 1)``, ``Association Released``; with -d also a dump of each A-ASSOCIATE PDU
and DIMSE message, after its ``pydicom.read_dataset()`` line for each command set it
decodes. Scripts and pynetdicom's own app tests look for those lines, so the engine shell
writes them here, in pynetdicom's words.

They go to the logger named ``pynetdicom`` because the node's logging set-up already treats
that name as an app's face: shown at the level asked for by ``log_format = "letter"`` (the
pynetdicom-compatible commands), kept at WARNING otherwise, so a node's own log has only
its own lines. Dumps are built only when DEBUG is enabled on it.
"""

from __future__ import annotations

import logging

from pydicom.uid import UID

from node import ul

log = logging.getLogger("pynetdicom")

_IDENTITY_TYPES = {1: "Username", 2: "Username/Password", 3: "Kerberos", 4: "SAML", 5: "JSON Web Token"}
_RESULTS = {0: "Accepted", 1: "User Rejection", 2: "Provider Rejection", 3: "Abstract Syntax Not Supported",
            4: "Transfer Syntax(es) Not Supported"}
_MESSAGE_NAMES = {ul.CEchoRQ: ("C-ECHO RQ", "Echo"), ul.CStoreRQ: ("C-STORE RQ", "Store"),
                  ul.NActionRQ: ("N-ACTION RQ", "Action"), ul.NEventReportRQ: ("N-EVENT-REPORT RQ", "Event Report"),
                  ul.NEventReportRSP: ("N-EVENT-REPORT RSP", ""), ul.CCancelRQ: ("C-CANCEL RQ", "")}


def dumping() -> bool:
    return log.isEnabledFor(logging.DEBUG)


def _name(uid: str) -> str:
    return f"={UID(uid).name}"


def _role(roles: tuple[ul.RoleSelection, ...], uid: str) -> str:
    for role in roles:
        if role.sop_class_uid == uid:
            return "/".join(name for name, on in (("SCP", role.scp_role), ("SCU", role.scu_role)) if on)
    return "Default"


def _window(what: str, window: ul.AsyncWindow | None) -> list[str]:
    if window is None:
        return [f"{what} Asynchronous Operations Window Negotiation: None"]
    return [f"{what} Asynchronous Operations Window Negotiation:",
            f"  Maximum Invoked Operations:     {window.max_invoked}",
            f"  Maximum Performed Operations:   {window.max_performed}"]


def _debug(lines: list[str]) -> None:
    for line in lines:
        log.debug(line)


def associate_request(rq: ul.AssociateRequest) -> None:
    """``Request Parameters:`` and the A-ASSOCIATE-RQ as pynetdicom dumps it."""
    if not dumping():
        return
    lines = ["Request Parameters:", f"{' INCOMING A-ASSOCIATE-RQ PDU ':=^76}",
             f"Their Implementation Class UID:      {rq.implementation_class_uid or 'unknown'}",
             f"Their Implementation Version Name:   {rq.implementation_version_name or 'unknown'}",
             f"Application Context Name:    {rq.application_context}",
             f"Calling Application Name:    {rq.calling_ae}",
             f"Called Application Name:     {rq.called_ae}",
             f"Their Max PDU Receive Size:  {rq.max_pdu}",
             "Presentation Context:" if len(rq.contexts) == 1 else "Presentation Contexts:"]
    for cx in sorted(rq.contexts, key=lambda c: c.context_id):
        lines += [f"  Context ID:        {cx.context_id} (Proposed)", f"    Abstract Syntax: {_name(cx.abstract_syntax)}",
                  f"    Proposed SCP/SCU Role: {_role(rq.roles, cx.abstract_syntax)}",
                  "    Proposed Transfer Syntax:" if len(cx.transfer_syntaxes) == 1 else "    Proposed Transfer Syntaxes:"]
        lines += [f"      {_name(ts)}" for ts in cx.transfer_syntaxes]
    lines += ["Requested Extended Negotiation:", *(f"  SOP Class: ={x.sop_class_uid}" for x in rq.extended)] if rq.extended \
        else ["Requested Extended Negotiation: None"]
    lines += ["Requested Common Extended Negotiation:", *(f"  SOP Class: {_name(x.sop_class_uid)}" for x in rq.common_extended)] \
        if rq.common_extended else ["Requested Common Extended Negotiation: None"]
    lines += _window("Requested", rq.async_window)
    identity = rq.user_identity
    if identity is None:
        lines.append("Requested User Identity Negotiation: None")
    else:
        lines += ["Requested User Identity Negotiation:",
                  f"  Authentication Mode: {identity.identity_type} - {_IDENTITY_TYPES.get(identity.identity_type, 'Unknown')}",
                  f"  Positive Response Requested: {'Yes' if identity.positive_response_requested else 'None'}"]
    lines.append(f"{' END A-ASSOCIATE-RQ PDU ':=^76}")
    _debug(lines)


def associate_answer(rq: ul.AssociateRequest, answer: ul.AssociateAccept | ul.AssociateReject) -> None:
    """``Accepting Association`` / ``Rejecting Association``, then (debug) the PDU sent."""
    if isinstance(answer, ul.AssociateReject):
        log.info("Rejecting Association")
        _debug(["Reject Parameters:", f"{' OUTGOING A-ASSOCIATE-RJ PDU ':=^76}", f"Result:    {answer.result}",
                f"Source:    {answer.source}", f"Reason:    {answer.reason}", f"{' END A-ASSOCIATE-RJ PDU ':=^76}"])
        return
    log.info("Accepting Association")
    if not dumping():
        return
    proposed = {cx.context_id: cx.abstract_syntax for cx in rq.contexts}
    lines = ["Accept Parameters:", f"{' OUTGOING A-ASSOCIATE-AC PDU ':=^76}",
             f"Our Implementation Class UID:      {answer.implementation_class_uid}"]
    if answer.implementation_version_name:
        lines.append(f"Our Implementation Version Name:   {answer.implementation_version_name}")
    lines += [f"Application Context Name:    {answer.application_context}", "Responding Application Name: resp. AE Title",
              f"Our Max PDU Receive Size:    {answer.max_pdu}", "Presentation Contexts:" if answer.contexts else "Presentation Contexts: None"]
    for cx in sorted(answer.contexts, key=lambda c: c.context_id):
        lines += [f"  Context ID:        {cx.context_id} ({_RESULTS.get(cx.result, cx.result)})",
                  f"    Abstract Syntax: {_name(proposed[cx.context_id])}"]
        if cx.result == ul.ACCEPTANCE:
            lines += [f"    Accepted SCP/SCU Role: {_role(answer.roles, proposed[cx.context_id])}",
                      f"    Accepted Transfer Syntax: {_name(cx.transfer_syntax)}"]
    lines += ["Accepted Extended Negotiation:", *(f"  SOP Class: ={x.sop_class_uid}" for x in answer.extended)] if answer.extended \
        else ["Accepted Extended Negotiation: None"]
    lines += _window("Accepted", answer.async_window)
    lines += [f"User Identity Negotiation Response: {'Yes' if answer.user_identity_response is not None else 'None'}",
              f"{' END A-ASSOCIATE-AC PDU ':=^76}"]
    _debug(lines)


def command_received(context_id: int, message: ul.Message) -> None:
    """``Received Echo Request (MsgID 1)`` and (debug) the DIMSE message as pynetdicom dumps it."""
    kind, verb = _MESSAGE_NAMES.get(type(message), (type(message).__name__, ""))
    # pynetdicom decodes every command set (Implicit VR Little Endian) with pydicom and says so
    log.debug('pydicom.read_dataset() TransferSyntax="Little Endian Implicit"')
    ident = getattr(message, "message_id", None)
    if verb and ident is not None:
        log.info("Received %s Request (MsgID %d)", verb, ident)
    if not dumping():
        return
    lines = [f"{' INCOMING DIMSE MESSAGE ':=^76}", f"Message Type                  : {kind}",
             f"Presentation Context ID       : {context_id}"]
    if ident is not None:
        lines.append(f"Message ID                    : {ident}")
    lines += [f"Data Set                      : {'Present' if message.has_dataset else 'None'}", f"{' END DIMSE MESSAGE ':=^76}"]
    _debug(lines)


def released() -> None:
    log.info("Association Released")


def aborted() -> None:
    log.info("Association Aborted")
