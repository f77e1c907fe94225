"""What the node decides about an incoming association and a received C-STORE, without I/O.

The worker actor feeds this module what pynetdicom hands it (command UIDs, the negotiated
transfer syntax, the peer's A-ASSOCIATE-RQ fields, the spooled dataset) and gets back the
presentation contexts to accept, the file meta to write, and a ``WriteInstance`` for the
writer, or a ``NodeError`` carrying the DIMSE status to answer with.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.filereader import read_dataset
from pydicom._uid_dict import UID_dictionary
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import write_file_meta_info
from pydicom import uid as uids

from node import ul
from node.config import NodeConfig
from node import dataset_walk
from node.dataset_walk import check_complete
from node.errors import ConfigError, DatasetError, STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_MISMATCH
from node.messages import WriteInstance
from node.paths import FilePathPattern, relative_path_for
from node.storage import PREAMBLE

VERIFICATION = "1.2.840.10008.1.1"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
UNCOMPRESSED = (uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian, uids.ExplicitVRBigEndian)
ANY = ("*",)

# Every transfer syntax pydicom knows, uncompressed ones first (the order the node prefers).
ALL_TRANSFER_SYNTAXES: tuple[str, ...] = tuple(
    dict.fromkeys(
        [uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian, uids.DeflatedExplicitVRLittleEndian, uids.ExplicitVRBigEndian]
        + [str(ts) for ts in uids.AllTransferSyntaxes]
    )
)


def storage_sop_classes() -> tuple[str, ...]:
    """Every Storage SOP Class in pydicom's UID registry, retired ones too (the default list)."""
    return tuple(sorted(uid for uid, (name, kind, *_rest) in UID_dictionary.items() if kind == "SOP Class" and "Storage" in name and "Commitment" not in name))


@dataclass(frozen=True)
class ContextRule:
    """An abstract syntax and the transfer syntaxes accepted for it (``("*",)`` = any)."""

    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]
    # SCP/SCU role selection the requestor may propose (None: default roles only)
    scu_role: bool | None = None
    scp_role: bool | None = None

    def expanded(self) -> tuple[str, ...]:
        return ALL_TRANSFER_SYNTAXES if self.transfer_syntaxes == ANY else self.transfer_syntaxes


def _resolve_uid(name: str) -> str:
    """A UID, or a keyword such as ``CTImageStorage`` / ``ImplicitVRLittleEndian``."""
    name = name.strip()
    if name and all(ch.isdigit() or ch == "." for ch in name):
        return name
    value = getattr(uids, name, None)
    if isinstance(value, str):
        return str(value)
    for uid, (_full, _kind, _info, _retired, keyword) in UID_dictionary.items():
        if keyword == name:
            return uid
    raise ConfigError(f"unknown SOP class or transfer syntax {name!r}")


def parse_sop_classes(text: str) -> tuple[ContextRule, ...]:
    """Parse dcm4che's ``sop-classes.properties`` format: ``<sop-class>:<ts>[,<ts>...]`` or ``:*``."""
    rules = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        sep = "=" if "=" in line and ":" not in line else ":"
        if sep not in line:
            raise ConfigError(f"sop classes line {number}: expected <sop-class>:<transfer syntaxes>")
        left, right = (part.strip() for part in line.split(sep, 1))
        syntaxes = ANY if right == "*" else tuple(_resolve_uid(ts) for ts in right.split(",") if ts.strip())
        if not syntaxes:
            raise ConfigError(f"sop classes line {number}: no transfer syntax")
        rules.append(ContextRule(_resolve_uid(left), syntaxes))
    return tuple(rules)


def context_rules(config: NodeConfig) -> tuple[ContextRule, ...]:
    """The presentation contexts this node accepts: Verification, then storage classes."""
    services = config.services
    if services.sop_classes:
        try:
            text = Path(services.sop_classes).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read SOP class list {services.sop_classes}: {exc.strerror}") from None
        return parse_sop_classes(text)
    rules = [ContextRule(VERIFICATION, tuple(services.verification_transfer_syntaxes))]
    if services.commitment_only:
        return (*rules, ContextRule(STORAGE_COMMITMENT, tuple(services.verification_transfer_syntaxes), scu_role=True, scp_role=True))
    if services.storage:
        # Storage Commitment both ways: requestors' N-ACTIONs (default roles) and reports
        # from SCPs that open an association to us with the SCP role (PS3.4 J.3.3).
        rules.append(ContextRule(STORAGE_COMMITMENT, UNCOMPRESSED, scu_role=True, scp_role=True))
        rules.extend(ContextRule(uid, ANY) for uid in storage_sop_classes())
    return tuple(rules)


def delay_ms(delays: Sequence[int], store_number: int) -> int:
    """dcm4che's delay lists: the k-th C-STORE of an association uses entry (k-1) mod n."""
    if not delays:
        return 0
    return int(delays[(store_number - 1) % len(delays)])


@dataclass(frozen=True)
class Received:
    """What pynetdicom tells us about one C-STORE-RQ and its association."""

    assoc_id: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    calling_aet: str
    called_aet: str
    implementation_class_uid: str
    implementation_version_name: str


def read_spooled(source: str | BinaryIO) -> tuple[Dataset, int]:
    """Parse a spooled dataset up to Pixel Data; return it and the dataset's byte offset.

    The spool (a file path, or the lean path's bytes in memory) is laid out as a Part 10
    file: preamble, file meta (pynetdicom's or ours), then the received dataset bytes
    unchanged. Large values are deferred so a huge instance costs little memory.
    """
    try:
        with (open(source, "rb") if isinstance(source, str) else source) as fh:
            ds = dcmread(fh, stop_before_pixels=True, defer_size=64 * 1024, force=False)
            offset = _dataset_offset(fh)
            size = fh.seek(0, os.SEEK_END)
            # Parsing stops before Pixel Data: check that every value arrived in full.
            check_complete(fh, offset, size, str(ds.file_meta.get("TransferSyntaxUID", "")))
    except (InvalidDicomError, ValueError, EOFError, KeyError, TypeError, OverflowError) as exc:
        raise DatasetError(f"dataset cannot be parsed: {exc}", status=STATUS_CANNOT_UNDERSTAND) from None
    except OSError as exc:
        raise DatasetError(f"spooled dataset unreadable: {exc.strerror}") from None
    return ds, offset


_PIXEL_TAGS = dataset_walk.PIXEL_TAGS
# Parsed through the file meta (dcmread): pydicom inflates or byte-swaps these itself.
_NEEDS_FILE_META = frozenset({uids.DeflatedExplicitVRLittleEndian, uids.ExplicitVRBigEndian})


def read_in_memory(data: bytes, meta: bytes, transfer_syntax: str, wanted: frozenset[int] | None = None, *,
                   values_only: bool = False) -> Dataset | NodeValues:
    """Parse a dataset received whole in memory up to Pixel Data, and check it is complete.

    The same checks as ``read_spooled`` without re-reading the file meta we just built:
    ``read_dataset`` goes straight at the bytes in the negotiated syntax (a small C-STORE's
    dataset parse was a fifth of a worker's CPU through ``dcmread``). With ``wanted`` (the
    tags the node reads: ``wanted_tags``), the header walk that proves the dataset complete
    also keeps those elements, and the Dataset holds only them (``_from_walk``).
    ``values_only``: the caller reads nothing but the node's values (no path pattern), so
    when the walk found them all plain the answer is those values (``NodeValues``), no Dataset.
    """
    if transfer_syntax in _NEEDS_FILE_META:
        return read_spooled(BytesIO(PREAMBLE + meta + data))[0]
    if wanted is not None and _first_element_agrees(data, transfer_syntax):
        ds = _from_walk(data, transfer_syntax, wanted, values_only)
        if ds is not None:
            return ds
    with BytesIO(data) as fh:
        return _read_dataset_at(fh, 0, len(data), transfer_syntax)


# What check_dataset and plan_write read (Specific Character Set decodes PatientID).
_NODE_TAGS = frozenset({0x00080005, 0x00080018, 0x0020000D, 0x0020000E, 0x00100020})


def wanted_tags(pattern: FilePathPattern | None) -> frozenset[int] | None:
    """The top-level tags the node reads from a received dataset with this path pattern; None
    when the pattern reaches into a sequence (then pydicom parses the whole dataset)."""
    if pattern is None:
        return _NODE_TAGS
    tags = pattern.top_level_tags
    return None if tags is None else _NODE_TAGS | tags


def _first_element_agrees(data: bytes, transfer_syntax: str) -> bool:
    """False when the first element looks explicit under an implicit syntax, or the other way
    round: pydicom then reads the dataset in the encoding it found (``_is_implicit_vr``),
    so it takes pydicom's parse."""
    if len(data) < 6:
        return True
    looks_implicit = not (0x40 < data[4] < 0x5B and 0x40 < data[5] < 0x5B)
    return looks_implicit == (transfer_syntax == uids.ImplicitVRLittleEndian)


def _from_walk(data: bytes, transfer_syntax: str, wanted: frozenset[int], values_only: bool = False) -> Dataset | NodeValues | None:
    """The Dataset pydicom's ``read_dataset`` would give, holding only the ``wanted`` elements
    (raw, decoded by pydicom when read, in the dataset's character set as it would be).

    None when pydicom's parse could judge the dataset otherwise than the walk: it parses
    undefined-length sequences (and values) before Pixel Data eagerly and may refuse what
    the walk only frames, so such datasets take pydicom's parse and keep their status.
    With ``values_only``, just the node's values when every one is plain and no Specific
    Character Set is sent: nothing in that Dataset's making could then fail (only decoding
    the character set can), and nobody would read it.
    """
    found = dataset_walk.scan(data, transfer_syntax, wanted)
    if found.undefined_before_pixels:
        return None
    plain = _plain_values(found.elements)
    if values_only and len(plain) == len(_NODE_VALUES) and 0x00080005 not in found.elements:
        return NodeValues(plain)
    implicit = transfer_syntax == uids.ImplicitVRLittleEndian
    try:
        raw = {BaseTag(tag): RawDataElement(BaseTag(tag), e.vr, len(e.value), e.value, e.offset, e.implicit, True)
               for tag, e in found.elements.items()}
        ds = WalkedDataset(raw, plain)
        encoding: str | list[str] = default_encoding
        charset = raw.get(BaseTag(0x00080005))
        if charset is not None:
            encoding = convert_encodings(convert_raw_data_element(charset).value)
        ds.set_original_encoding(implicit, True, encoding)
    except (InvalidDicomError, ValueError, EOFError, KeyError, TypeError, OverflowError, NotImplementedError) as exc:
        raise DatasetError(f"dataset cannot be parsed: {exc}", status=STATUS_CANNOT_UNDERSTAND) from None
    return ds


class WalkedDataset(Dataset):
    """A Dataset of the elements a header walk kept, with the values the node reads decoded
    already where that is plain (``plain``, read by ``node_value``): pydicom's conversion per
    attribute read cost ~11 us, four per small C-STORE, for what is mostly an ASCII UID."""

    def __init__(self, raw: dict, plain: dict[str, str | None]) -> None:
        super().__init__(raw)
        object.__setattr__(self, "plain", plain)


@dataclass(frozen=True, slots=True)
class NodeValues:
    """What check_dataset and plan_write read of a walked dataset, when every value is plain
    (``_plain_values``) and no path pattern reads more: building pydicom's Dataset of the
    kept elements (``WalkedDataset``) cost ~13 us of a worker's CPU per small C-STORE (timed
    alone, 2026-12-03; pydicom's ``Dataset.__setattr__`` in ``python -m bench profile``) for
    a Dataset nobody read."""

    plain: dict[str, str | None]


# The values check_dataset and plan_write read: keyword -> (tag, the dictionary's VR).
_NODE_VALUES = {"SOPInstanceUID": (0x00080018, "UI"), "StudyInstanceUID": (0x0020000D, "UI"),
                "SeriesInstanceUID": (0x0020000E, "UI"), "PatientID": (0x00100020, "LO")}


def _plain_values(elements: dict[int, dataset_walk.Element]) -> dict[str, str | None]:
    """The node's values whose decoding cannot differ from pydicom's: absent (None), or one
    value of printable ASCII (NUL padding at the end only) in the dictionary's VR, and for
    PatientID no Specific Character Set. pydicom strips a UID on both sides (``UID.__new__``)
    and an LO on the right (``convert_text``), after NUL padding and trailing spaces; any
    other value is left to pydicom."""
    plain: dict[str, str | None] = {}
    for keyword, (tag, vr) in _NODE_VALUES.items():
        element = elements.get(tag)
        if element is None:
            plain[keyword] = None
            continue
        if element.vr not in (None, vr) or (vr == "LO" and 0x00080005 in elements):
            continue
        try:
            text = element.value.rstrip(b"\x00").decode("ascii")
        except UnicodeDecodeError:
            continue
        if not text.isprintable() or "\\" in text:
            continue
        plain[keyword] = text.strip(" ") if vr == "UI" else text.rstrip(" ")
    return plain


def node_value(ds: Dataset | NodeValues, keyword: str) -> object:
    """``ds.get(keyword)`` for the values the node reads, from a walk's plain values when it has them."""
    if isinstance(ds, NodeValues):  # holds every value the node reads
        return ds.plain.get(keyword)
    if isinstance(ds, WalkedDataset) and keyword in ds.plain:
        return ds.plain[keyword]
    return ds.get(keyword)


def read_own_spool(path: str, meta: bytes, size: int, transfer_syntax: str) -> tuple[Dataset, int]:
    """Parse a spool this worker wrote (preamble, ``meta``, ``size`` dataset bytes) up to
    Pixel Data, check it is complete; return the dataset and its byte offset.

    We wrote the preamble and file meta ourselves, so the dataset's offset is known and
    ``read_dataset`` starts there: ``dcmread``'s preamble and file meta parse was a third of
    a worker's CPU per 512 KiB instance. Big endian and deflated datasets take
    ``read_spooled`` (pydicom converts them through the file meta).
    """
    if transfer_syntax in _NEEDS_FILE_META:
        return read_spooled(path)
    offset = len(PREAMBLE) + len(meta)
    try:
        with open(path, "rb") as fh:
            return _read_dataset_at(fh, offset, offset + size, transfer_syntax), offset
    except OSError as exc:
        raise DatasetError(f"spooled dataset unreadable: {exc.strerror}") from None


def _read_dataset_at(fh: BinaryIO, start: int, end: int, transfer_syntax: str) -> Dataset:
    """The dataset in bytes ``start..end`` of ``fh`` up to Pixel Data, its completeness checked."""
    # The walk first: pydicom reading a sequence cut short raises OSError or struct.error
    # (which would have cost the peer 0xA700 and the log a traceback), not a parse error.
    check_complete(fh, start, end, transfer_syntax)
    try:
        fh.seek(start)
        ds = read_dataset(fh, is_implicit_VR=transfer_syntax == uids.ImplicitVRLittleEndian, is_little_endian=True,
                          stop_when=lambda tag, _vr, _length: tag in _PIXEL_TAGS, defer_size=64 * 1024)
    except (InvalidDicomError, ValueError, EOFError, KeyError, TypeError, OverflowError, NotImplementedError, struct.error) as exc:
        raise DatasetError(f"dataset cannot be parsed: {exc}", status=STATUS_CANNOT_UNDERSTAND) from None
    return ds


def _dataset_offset(fh: object) -> int:
    """Where the dataset starts: after preamble, DICM and the meta group (its length is explicit)."""
    import struct

    fh.seek(128 + 4)  # type: ignore[attr-defined]
    head = fh.read(12)  # type: ignore[attr-defined]
    if len(head) < 12 or head[:4] != b"\x02\x00\x00\x00":
        raise DatasetError("spooled file has no meta group length")
    (group_length,) = struct.unpack("<I", head[8:12])
    return 128 + 4 + 12 + group_length


def check_dataset(ds: Dataset | NodeValues, received: Received) -> None:
    """Refuse datasets that cannot be stored as what the command says they are."""
    try:
        instance_uid = node_value(ds, "SOPInstanceUID")
    except Exception as exc:  # pydicom raises many types for broken values
        raise DatasetError(f"dataset cannot be parsed: {exc}", status=STATUS_CANNOT_UNDERSTAND) from None
    if not instance_uid:
        raise DatasetError("dataset lacks SOP Instance UID (0008,0018)", status=STATUS_DATASET_MISMATCH)
    if str(instance_uid) != received.sop_instance_uid:
        raise DatasetError(
            f"dataset SOP Instance UID {instance_uid} differs from the command's {received.sop_instance_uid}",
            status=STATUS_DATASET_MISMATCH,
        )


def file_meta_bytes(received: Received) -> bytes:
    """File meta as dcm4che storescp writes it: the peer's implementation, Source AE = calling AE."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = received.sop_class_uid
    meta.MediaStorageSOPInstanceUID = received.sop_instance_uid
    meta.TransferSyntaxUID = received.transfer_syntax
    meta.ImplementationClassUID = received.implementation_class_uid or "1.2.826.0.1.3680043.9.7433.1"
    if received.implementation_version_name:
        meta.ImplementationVersionName = received.implementation_version_name
    if received.calling_aet:
        meta.SourceApplicationEntityTitle = received.calling_aet
    out = BytesIO()
    write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
    return out.getvalue()


class FileMetaCache:
    """``file_meta_bytes``, encoded by pydicom once per kind of instance and patched after.

    pydicom's file meta writer cost ~9% of a worker's CPU per small instance. Between the
    instances of one sender only the SOP Instance UID (0002,0003) differs, so the bytes
    around that element are kept and the element and the group length rebuilt for each.
    """

    LIMIT = 256

    def __init__(self) -> None:
        self._templates: dict[tuple[str, ...], tuple[bytes, bytes]] = {}

    def meta(self, received: Received) -> bytes:
        key = (received.sop_class_uid, received.transfer_syntax, received.implementation_class_uid,
               received.implementation_version_name, received.calling_aet)
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) >= self.LIMIT:
                self._templates.clear()
            template = self._templates[key] = _meta_template(received)
        before, after = template
        uid = received.sop_instance_uid.encode("ascii", "replace")
        if len(uid) % 2:
            uid += b"\x00"
        body = before + _INSTANCE_TAG + struct.pack("<H", len(uid)) + uid + after
        return _GROUP_LENGTH_HEAD + struct.pack("<I", len(body)) + body


_GROUP_LENGTH_HEAD = b"\x02\x00\x00\x00UL\x04\x00"
_INSTANCE_TAG = b"\x02\x00\x03\x00UI"


def _meta_template(received: Received) -> tuple[bytes, bytes]:
    """pydicom's file meta for ``received`` split around (0002,0003), group length dropped."""
    encoded = file_meta_bytes(received)
    if not encoded.startswith(_GROUP_LENGTH_HEAD):
        raise DatasetError("file meta does not start with its group length")
    body = encoded[len(_GROUP_LENGTH_HEAD) + 4 :]
    start = body.index(_INSTANCE_TAG)
    (length,) = struct.unpack_from("<H", body, start + 6)
    return body[:start], body[start + 8 + length :]


def plan_write(received: Received, ds: Dataset | NodeValues, pattern: FilePathPattern | None) -> WriteInstance:
    """The writer's request for one checked dataset (the path is checked for safety here)."""
    if isinstance(ds, NodeValues) and pattern is not None:
        raise TypeError("a path pattern reads the dataset: read_in_memory without values_only")
    try:
        relpath = relative_path_for(pattern, ds, received.sop_instance_uid)  # type: ignore[arg-type]  # Dataset when a pattern reads it
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise DatasetError(f"file path pattern cannot be applied: {exc}") from None
    return WriteInstance(
        assoc_id=received.assoc_id,
        relpath=relpath,
        sop_class_uid=received.sop_class_uid,
        sop_instance_uid=received.sop_instance_uid,
        transfer_syntax=received.transfer_syntax,
        calling_aet=received.calling_aet,
        called_aet=received.called_aet,
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        patient_id=_text(ds, "PatientID"),
    )


def _text(ds: Dataset | NodeValues, keyword: str) -> str:
    """An attribute as text for the index; unreadable values become empty."""
    try:
        value = node_value(ds, keyword)
    except Exception:  # broken values must not stop storing; the index just lacks them
        return ""
    return str(value or "")[:256]


class _UnknownAsStorage(dict):
    """Contexts for ``--accept-unknown`` (pynetdicom's unrestricted storage service): a SOP
    class not listed is taken with any transfer syntax when it may be a storage class
    (private, unknown to pydicom, or storage); a known non-storage class stays refused."""

    def get(self, key: str, default: tuple[str, ...] | None = None) -> tuple[str, ...] | None:  # type: ignore[override]
        found = super().get(key, default)
        if found is None and _storage_like(key):
            return (ul.ANY,)
        return found


def _storage_like(uid: str) -> bool:
    entry = UID_dictionary.get(uid)
    return entry is None or entry[1] == "SOP Class" and "Storage" in entry[0] or uids.UID(uid).is_private


def refuse_commitment_without_scp_role(request: ul.AssociateRequest, answer: ul.AssociateAccept) -> ul.AssociateAccept:
    """DCMTK stcomscu's ``--role-reject``: an SCP that opens an association to deliver a
    report must propose SCP/SCU role selection with the SCP role (PS3.4 J.3.3); a Storage
    Commitment context proposed without it is refused (user rejection)."""
    if any(r.sop_class_uid == STORAGE_COMMITMENT and r.scp_role for r in request.roles):
        return answer
    commitment_ids = {cx.context_id for cx in request.contexts if cx.abstract_syntax == STORAGE_COMMITMENT}
    results = []
    for result in answer.contexts:
        if result.context_id in commitment_ids and result.result == ul.ACCEPTANCE:
            result = replace(result, result=ul.USER_REJECTION)
        results.append(result)
    return replace(answer, contexts=tuple(results))


def acceptor_policy(rules: Sequence[ContextRule], *, max_pdu: int, implementation_class_uid: str,
                    implementation_version_name: str, accept_unknown: bool = False, max_ops_invoked: int = 1,
                    max_ops_performed: int = 1) -> ul.AcceptorPolicy:
    """The engine's acceptor policy for these rules (node/ul negotiates with it).

    A rule accepting any syntax becomes the list of syntaxes pydicom knows, walked in the
    requestor's order (dcm4che's rule: files stored as sent); an explicit list keeps the
    acceptor's order (pynetdicom's rule, which echoscp's preference options rely on). A
    window of 1 and 1 (the default of every association) answers no window item.
    """
    window = None
    if (max_ops_invoked, max_ops_performed) != (1, 1):
        window = ul.AsyncWindow(max_invoked=max_ops_invoked, max_performed=max_ops_performed)
    contexts: dict[str, tuple[str, ...]] = _UnknownAsStorage() if accept_unknown else {}
    for rule in rules:
        contexts.setdefault(rule.abstract_syntax, rule.expanded())
    return ul.AcceptorPolicy(
        contexts=contexts,
        requestor_order=frozenset(rule.abstract_syntax for rule in rules if rule.transfer_syntaxes == ANY),
        roles={rule.abstract_syntax: (bool(rule.scu_role), bool(rule.scp_role)) for rule in rules
               if rule.scu_role is not None or rule.scp_role is not None},
        max_pdu=max_pdu, implementation_class_uid=implementation_class_uid,
        implementation_version_name=implementation_version_name, async_window=window)
