"""The acceptor's answer to an A-ASSOCIATE-RQ, from a policy its caller gives (pure).

The engine never decides what to accept: a shell receives ``AssociateRequest``, calls
``negotiate(request, policy)`` (or builds its own answer) and sends what it returns. Kept
apart from the state machine as wsproto keeps its handshake apart from its framing.

Transfer syntax choice: a policy listing ``ANY`` for an abstract syntax takes the
requestor's first proposed syntax (dcm4che's rule, files stored as sent); an explicit list is
walked in the acceptor's order (pynetdicom's rule, which echoscp's preference options use).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from node.ul._events import (
    ABSTRACT_SYNTAX_NOT_SUPPORTED,
    ACCEPTANCE,
    APPLICATION_CONTEXT,
    TRANSFER_SYNTAXES_NOT_SUPPORTED,
    USER_REJECTION,
    AssociateAccept,
    AssociateReject,
    AssociateRequest,
    AsyncWindow,
    ContextResult,
    ExtendedNegotiation,
    ProposedContext,
    RoleSelection,
    UserIdentity,
)

ANY = "*"

# A-ASSOCIATE-RJ fields (PS3.8 9.3.4)
REJECTED_PERMANENT, REJECTED_TRANSIENT = 1, 2
SOURCE_USER, SOURCE_PROVIDER_ACSE = 1, 2
REASON_PROTOCOL_VERSION = 2  # with SOURCE_PROVIDER_ACSE
REASON_NO_REASON, REASON_APPLICATION_CONTEXT, REASON_CALLING_AE, REASON_CALLED_AE = 1, 2, 3, 7


class AcceptEverything(Mapping[str, tuple[str, ...]]):
    """An ``AcceptorPolicy.contexts`` that takes every abstract syntax with any transfer
    syntax: for peers in tests and the benchmark's floor receiver, never for the node, whose
    contexts come from its configuration."""

    def __getitem__(self, key: str) -> tuple[str, ...]:
        return (ANY,)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@dataclass(frozen=True, kw_only=True)
class AcceptorPolicy:
    """What an acceptor agrees to.

    ``contexts``: abstract syntax -> acceptable transfer syntaxes in preference order, or
    containing ``ANY``. ``roles``: abstract syntax -> (may the requestor be SCU, may it be
    SCP) for role selection; absent means SCU only (PS3.7 D.3.3.4 defaults). ``extended``:
    the SOP Class Extended Negotiation reply for a proposal, or None to leave it unanswered.
    ``identify``: the server response for a User Identity proposal (b"" when none is due),
    or None to reject the association; without ``identify`` the proposal is ignored, which
    PS3.7 D.3.3.7 allows. ``async_window``: the most we perform and invoke; None answers no
    window, which leaves the default of one operation each way. ``requestor_order``:
    abstract syntaxes whose explicit list is walked in the requestor's order, not ours (the
    node's rule for "any known syntax", which it expands to a list).
    """

    contexts: Mapping[str, tuple[str, ...]]
    roles: Mapping[str, tuple[bool, bool]] = field(default_factory=dict)
    extended: Callable[[ExtendedNegotiation], bytes | None] | None = None
    identify: Callable[[UserIdentity], bytes | None] | None = None
    async_window: AsyncWindow | None = None
    requestor_order: frozenset[str] = frozenset()
    max_pdu: int = 16382
    implementation_class_uid: str = "1.2.826.0.1.3680043.9.3811.0"
    implementation_version_name: str = ""


def _min_window(a: int, b: int) -> int:
    """The smaller of two window sizes where 0 means unlimited."""
    return max(a, b) if 0 in (a, b) else min(a, b)


def _transfer_syntax(proposed: ProposedContext, allowed: tuple[str, ...], requestor_order: bool) -> str | None:
    if ANY in allowed:
        return proposed.transfer_syntaxes[0]
    if requestor_order:
        return next((ts for ts in proposed.transfer_syntaxes if ts in allowed), None)
    return next((ts for ts in allowed if ts in proposed.transfer_syntaxes), None)


def _role_answers(request: AssociateRequest, policy: AcceptorPolicy) -> dict[str, RoleSelection]:
    answers = {}
    for proposal in request.roles:
        may_scu, may_scp = policy.roles.get(proposal.sop_class_uid, (True, False))
        answers[proposal.sop_class_uid] = RoleSelection(sop_class_uid=proposal.sop_class_uid,
                                                        scu_role=proposal.scu_role and may_scu,
                                                        scp_role=proposal.scp_role and may_scp)
    return answers


def _context_result(proposed: ProposedContext, policy: AcceptorPolicy, roles: dict[str, RoleSelection]) -> ContextResult:
    allowed = policy.contexts.get(proposed.abstract_syntax)
    fallback = proposed.transfer_syntaxes[0]  # not significant when not accepted (PS3.8 9.3.3.2)
    if allowed is None:
        return ContextResult(context_id=proposed.context_id, result=ABSTRACT_SYNTAX_NOT_SUPPORTED, transfer_syntax=fallback)
    chosen = _transfer_syntax(proposed, allowed, proposed.abstract_syntax in policy.requestor_order)
    if chosen is None:
        return ContextResult(context_id=proposed.context_id, result=TRANSFER_SYNTAXES_NOT_SUPPORTED, transfer_syntax=fallback)
    role = roles.get(proposed.abstract_syntax)
    if role is not None and not (role.scu_role or role.scp_role):
        return ContextResult(context_id=proposed.context_id, result=USER_REJECTION, transfer_syntax=fallback)
    return ContextResult(context_id=proposed.context_id, result=ACCEPTANCE, transfer_syntax=chosen)


def negotiate(request: AssociateRequest, policy: AcceptorPolicy) -> AssociateAccept | AssociateReject:
    """The A-ASSOCIATE-AC (or -RJ) answering ``request`` under ``policy``.

    PS3.8's AE-6 has the provider reject a request it cannot take (a protocol version other
    than 1) before the user sees it; the engine leaves that to this function, so a shell
    that builds its own answer decides it too.
    """
    if not request.protocol_version & 0x0001:
        return AssociateReject(result=REJECTED_PERMANENT, source=SOURCE_PROVIDER_ACSE, reason=REASON_PROTOCOL_VERSION)
    if request.application_context != APPLICATION_CONTEXT:
        return AssociateReject(result=REJECTED_PERMANENT, source=SOURCE_USER, reason=REASON_APPLICATION_CONTEXT)
    identity_response = None
    if request.user_identity is not None and policy.identify is not None:
        identity_response = policy.identify(request.user_identity)
        if identity_response is None:
            return AssociateReject(result=REJECTED_PERMANENT, source=SOURCE_USER, reason=REASON_NO_REASON)
        if not request.user_identity.positive_response_requested:
            identity_response = None
    roles = _role_answers(request, policy)
    results = tuple(_context_result(cx, policy, roles) for cx in request.contexts)
    accepted_syntaxes = {cx.abstract_syntax for cx, res in zip(request.contexts, results) if res.result == ACCEPTANCE}
    window = None
    if request.async_window is not None and policy.async_window is not None:
        window = AsyncWindow(max_invoked=_min_window(request.async_window.max_invoked, policy.async_window.max_performed),
                             max_performed=_min_window(request.async_window.max_performed, policy.async_window.max_invoked))
    extended = []
    if policy.extended is not None:
        for proposal in request.extended:
            reply = policy.extended(proposal) if proposal.sop_class_uid in accepted_syntaxes else None
            if reply is not None:
                extended.append(ExtendedNegotiation(sop_class_uid=proposal.sop_class_uid, info=reply))
    return AssociateAccept(
        called_ae=request.called_ae, calling_ae=request.calling_ae, contexts=results,
        max_pdu=policy.max_pdu, implementation_class_uid=policy.implementation_class_uid,
        implementation_version_name=policy.implementation_version_name, async_window=window,
        roles=tuple(r for uid, r in roles.items() if uid in accepted_syntaxes), extended=tuple(extended),
        user_identity_response=identity_response)
