"""``nodectl storescp`` against real senders: DCMTK's storescu/echoscu and pynetdicom.

Each node is a real ``nodectl storescp`` (supervisord, listener, workers, writer) on a free
port under the test's temporary directory, stopped by PID. Checks are what a user checks:
where files land, that the stored dataset is byte for byte what was sent, the statuses the
sender sees, and rejections with dcm4che's reasons.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from node.tools import storescp as storescp_tool
from tests.nodes import RunningNode
from tests.support import NODECTL, associate_or_rejection, dataset_bytes, free_port, have, make_ct

pytestmark = pytest.mark.skipif(not have("/usr/bin/storescu"), reason="DCMTK (Debian package dcmtk) is not installed")

DCMTK_STORESCU = "/usr/bin/storescu"
DCMTK_ECHOSCU = "/usr/bin/echoscu"
VERIFICATION = "1.2.840.10008.1.1"
PATTERN = "{00100020}/{0020000D}/{0020000E}/{00080018}.dcm"


def storescp(tmp: Path, *options: str) -> RunningNode:
    port = free_port()
    node = RunningNode(["storescp", *options[:1], *[o.replace("PORT", str(port)) for o in options[1:]], "--workers", "1"], cwd=tmp, port=port)
    return node.wait_ready()


def raw_store(port: int, *files: Path, aet: str = "RAWSCU", aec: str = "ANY-SCP") -> dict:
    """Send files' bytes unchanged with pynetdicom (subprocess); return its JSON report."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.raw_store", "127.0.0.1", str(port), *map(str, files), "--aet", aet, "--aec", aec],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2],
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def associate(port: int, contexts: list[tuple[str, str]], *, aet: str = "PYSCU", aec: str = "ANY-SCP"):  # noqa: ANN201
    """An in-process pynetdicom association request (nothing global is changed)."""
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    for abstract, ts in contexts:
        ae.add_requested_context(abstract, ts)
    return ae.associate("127.0.0.1", port, ae_title=aec)


def rejection(port: int, contexts: list[tuple[str, str]], *, aet: str = "PYSCU", aec: str = "ANY-SCP") -> tuple[int, int, int] | None:
    """The A-ASSOCIATE-RJ's (result, source, reason) an association request got, or None."""
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    for abstract, ts in contexts:
        ae.add_requested_context(abstract, ts)
    assoc, rejected = associate_or_rejection(ae, "127.0.0.1", port, ae_title=aec)
    if assoc.is_established:
        assoc.release()
    return rejected


def stored_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and ".incoming" not in p.relative_to(directory).parts)


# ----- start-up and option errors (no association needed) ----------------------------------


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NODECTL, "storescp", *args], capture_output=True, text=True, timeout=timeout)


def test_missing_bind_is_a_parse_error_exit_2() -> None:
    result = run_cli("--directory", "x")
    assert result.returncode == 2
    assert "storescp: missing required option -b" in result.stderr
    assert "Try `storescp --help' for more information." in result.stderr


@pytest.mark.parametrize("pattern", ["{00080018,bogus}", "{00020010,urlencoded?}", "{00080018"])
def test_bad_filepath_pattern_fails_at_start_exit_2(tmp_path: Path, pattern: str) -> None:
    result = run_cli("-b", str(free_port()), "--directory", str(tmp_path), "--filepath", pattern)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("storescp:")


def test_status_with_0x_prefix_is_refused_as_dcm4che_does() -> None:
    result = run_cli("-b", str(free_port()), "--status", "0x0110")
    assert result.returncode == 2


@pytest.mark.parametrize("bind", [":11112", "AE@::1:11112", "NOPORT:abc"])
def test_bad_bind_values_exit_2(bind: str) -> None:
    assert run_cli("-b", bind).returncode == 2


def test_tls_without_a_key_store_is_refused_plainly_not_ignored() -> None:
    result = run_cli("-b", str(free_port()), "--tls")
    assert result.returncode == 2
    assert "--key-store" in result.stderr  # dcm4che's built-in test key is not shipped (tests/actors/test_tls.py)


def test_port_in_use_exits_2(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_cli("-b", f"127.0.0.1:{port}".replace("127.0.0.1:", "X@127.0.0.1:"), "--directory", str(tmp_path))
    assert result.returncode == 2
    assert "cannot listen" in result.stderr


def test_help_and_version_exit_0() -> None:
    assert run_cli("-h").returncode == 0
    version = run_cli("-V")
    assert version.returncode == 0 and version.stdout.startswith("storescp:")


# ----- a node with a called AE title and a file path pattern --------------------------------


@pytest.fixture(scope="module")
def pattern_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningNode, Path]]:
    tmp = tmp_path_factory.mktemp("pattern")
    store = tmp / "in"
    node = storescp(tmp, "-b", "STORESCP@127.0.0.1:PORT", "--directory", str(store), "--filepath", PATTERN)
    try:
        yield node, store
    finally:
        node.stop()


def test_dcmtk_storescu_files_land_at_the_pattern_paths_intact(pattern_node: tuple[RunningNode, Path], tmp_path: Path) -> None:
    node, store = pattern_node
    study, series = generate_uid(), generate_uid()
    sent = [make_ct(tmp_path / f"ct{i}.dcm", patient_id="P-DCMTK", StudyInstanceUID=study, SeriesInstanceUID=series) for i in range(3)]
    # 1.3 MB: past the inline threshold, spooled by the worker and written on the direct path
    sent.append(make_ct(tmp_path / "big.dcm", patient_id="P-DCMTK", pixels=800, StudyInstanceUID=study, SeriesInstanceUID=series))
    files = sorted(tmp_path.glob("*.dcm"))
    result = subprocess.run([DCMTK_STORESCU, "-aec", "STORESCP", "-aet", "MODALITY", "127.0.0.1", str(node.port), *map(str, files)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    node.materialised()
    for path in files:
        ds = dcmread(path)
        target = store / "P-DCMTK" / study / series / f"{ds.SOPInstanceUID}.dcm"
        assert target.is_file(), f"{target} missing; store has {stored_files(store)}"
        assert dataset_bytes(target) == dataset_bytes(path)
        meta = dcmread(target).file_meta
        assert meta.SourceApplicationEntityTitle == "MODALITY"
        assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert len([p for p in stored_files(store) if p.parts[-4] == "P-DCMTK"]) == 4
    assert not [p for p in store.rglob("*.part") if ".incoming" not in p.parts]


def test_pynetdicom_storescu_files_arrive_intact(pattern_node: tuple[RunningNode, Path], tmp_path: Path) -> None:
    node, store = pattern_node
    paths = [tmp_path / f"py{i}.dcm" for i in range(3)]
    sent = [make_ct(p, patient_id="P-PYNET") for p in paths]
    result = subprocess.run([sys.executable, "-m", "pynetdicom", "storescu", "-aec", "STORESCP", "127.0.0.1", str(node.port), *map(str, paths)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    node.materialised()
    for path, ds in zip(paths, sent):
        target = store / "P-PYNET" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert target.is_file()
        assert dcmread(target).PixelData == ds.PixelData
        assert dcmread(target).PatientName == ds.PatientName


def test_missing_patient_id_collapses_the_empty_component(pattern_node: tuple[RunningNode, Path], tmp_path: Path) -> None:
    node, store = pattern_node
    ds = make_ct(tmp_path / "nopid.dcm")
    ds_file = tmp_path / "nopid.dcm"
    raw = dcmread(ds_file)
    del raw.PatientID
    raw.save_as(ds_file, enforce_file_format=True)
    report = raw_store(node.port, ds_file, aec="STORESCP")
    assert report["results"][0]["status"] == 0
    node.materialised()
    assert (store / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm").is_file()


@pytest.mark.parametrize("hostile", ["../../escape", "..", "/", "a/../../b", "x" * 300])
def test_hostile_attribute_values_never_leave_the_directory(pattern_node: tuple[RunningNode, Path], tmp_path: Path, hostile: str) -> None:
    node, store = pattern_node
    path = tmp_path / "hostile.dcm"
    ds = make_ct(path, patient_id=hostile)
    report = raw_store(node.port, path, aec="STORESCP")
    status = report["results"][0]["status"]
    node.materialised()
    outside = [p for p in node.cwd.rglob("*") if p.is_file() and ds.SOPInstanceUID in p.name and store not in p.parents]
    assert outside == []
    if status == 0:  # a value that collapses harmlessly ("/" -> empty component) may be stored inside
        assert any(ds.SOPInstanceUID in p.name for p in stored_files(store))
    else:
        assert status == 0x0110
        assert not any(ds.SOPInstanceUID in p.name for p in stored_files(store))


def test_unparseable_dataset_gets_a_failure_and_nothing_is_stored(pattern_node: tuple[RunningNode, Path], tmp_path: Path) -> None:
    node, store = pattern_node
    good = tmp_path / "good.dcm"
    ds = make_ct(good)
    broken = tmp_path / "broken.dcm"
    blob = good.read_bytes()
    offset = len(blob) - len(dataset_bytes(good))
    # Keep the file meta, then a dataset whose first element claims a 2 GiB length.
    broken.write_bytes(blob[:offset] + b"\x08\x00\x05\x00CS\xff\xff" + b"\x10\x00\x10\x00PN\x00\x00\xff\xff\xff\x7f" + b"junk")
    report = raw_store(node.port, broken, aec="STORESCP")
    status = report["results"][0]["status"]
    assert status is not None and status >= 0xA000, hex(status or 0)
    assert not any(ds.SOPInstanceUID in p.name for p in stored_files(store))


def test_dataset_without_sop_instance_uid_is_refused(pattern_node: tuple[RunningNode, Path], tmp_path: Path) -> None:
    node, store = pattern_node
    path = tmp_path / "nouid.dcm"
    make_ct(path, patient_id="P-NOUID")
    raw = dcmread(path)
    del raw.SOPInstanceUID
    raw.save_as(path, enforce_file_format=False)
    report = raw_store(node.port, path, aec="STORESCP")
    assert report["results"][0]["status"] == 0xA900
    assert not (store / "P-NOUID").exists()


def test_sending_the_same_instance_twice_keeps_one_file(pattern_node: tuple[RunningNode, Path], tmp_path: Path) -> None:
    node, store = pattern_node
    path = tmp_path / "twice.dcm"
    make_ct(path, patient_id="P-TWICE")
    first = raw_store(node.port, path, aec="STORESCP")
    second = raw_store(node.port, path, aec="STORESCP")
    assert first["results"][0]["status"] == second["results"][0]["status"] == 0
    node.materialised()
    assert len(list((store / "P-TWICE").rglob("*.dcm"))) == 1


def test_wrong_called_ae_title_is_rejected_with_reason_7(pattern_node: tuple[RunningNode, Path]) -> None:
    node, _ = pattern_node
    result = subprocess.run([DCMTK_ECHOSCU, "-v", "-aec", "OTHER", "127.0.0.1", str(node.port)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "Called AE Title Not Recognized" in result.stdout + result.stderr
    assert rejection(node.port, [(VERIFICATION, ImplicitVRLittleEndian)], aec="OTHER") == (1, 1, 7)


def test_echo_is_accepted_with_implicit_only(pattern_node: tuple[RunningNode, Path]) -> None:
    node, _ = pattern_node
    result = subprocess.run([DCMTK_ECHOSCU, "-aec", "STORESCP", "127.0.0.1", str(node.port)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    ct = "1.2.840.10008.5.1.4.1.1.2"
    explicit_only = associate(node.port, [(VERIFICATION, ExplicitVRLittleEndian), (ct, ExplicitVRLittleEndian)], aec="STORESCP")
    try:
        assert [cx.abstract_syntax for cx in explicit_only.accepted_contexts] == [ct]
        [refused] = explicit_only.rejected_contexts
        assert (refused.abstract_syntax, refused.result) == (VERIFICATION, 0x04)  # transfer syntaxes not supported
    finally:
        explicit_only.release()


def test_unknown_sop_class_is_refused_in_negotiation(pattern_node: tuple[RunningNode, Path]) -> None:
    node, _ = pattern_node
    assoc = associate(node.port, [("1.2.3.4.5.6.7", ExplicitVRLittleEndian), (VERIFICATION, ImplicitVRLittleEndian)], aec="STORESCP")
    try:
        assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [VERIFICATION]
        assert assoc.rejected_contexts[0].result == 0x03  # abstract syntax not supported
    finally:
        assoc.release()


# ----- --accept, --accept-unknown, --status ---------------------------------------------------


@pytest.fixture(scope="module")
def policy_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningNode, Path]]:
    tmp = tmp_path_factory.mktemp("policy")
    store = tmp / "in"
    node = storescp(tmp, "-b", "PORT", "--directory", str(store), "--accept", "MODALITY1", "MODALITY2",
                    "--accept-unknown", "--status", "0110H")
    try:
        yield node, store
    finally:
        node.stop()


def test_calling_ae_not_in_accept_is_rejected_with_reason_3(policy_node: tuple[RunningNode, Path]) -> None:
    node, _ = policy_node
    assert rejection(node.port, [(VERIFICATION, ImplicitVRLittleEndian)], aet="X") == (1, 1, 3)
    dcmtk = subprocess.run([DCMTK_ECHOSCU, "-aet", "MODALITY2", "127.0.0.1", str(node.port)], capture_output=True, text=True, timeout=30)
    assert dcmtk.returncode == 0


def test_accept_unknown_stores_a_private_sop_class_and_status_is_configured(policy_node: tuple[RunningNode, Path], tmp_path: Path) -> None:
    node, store = policy_node
    path = tmp_path / "private.dcm"
    ds = make_ct(path, SOPClassUID="1.2.3.4.5.6.7.8")
    raw = dcmread(path)
    raw.file_meta.MediaStorageSOPClassUID = "1.2.3.4.5.6.7.8"
    raw.save_as(path, enforce_file_format=True)
    report = raw_store(node.port, path, aet="MODALITY1")
    assert report["results"][0]["status"] == 0x0110  # --status 0110H on every response
    node.materialised()
    stored = store / ds.SOPInstanceUID  # no --filepath: named after the SOP Instance UID
    assert stored.is_file()
    assert dataset_bytes(stored) == dataset_bytes(path)


# ----- --ignore, --sop-classes, --response-delay -----------------------------------------------


def test_ignore_stores_nothing_and_answers_the_status(tmp_path: Path) -> None:
    store = tmp_path / "in"
    node = storescp(tmp_path, "-b", "PORT", "--directory", str(store), "--ignore", "--status", "A700H")
    try:
        path = tmp_path / "x.dcm"
        make_ct(path)
        report = raw_store(node.port, path)
        assert report["results"][0]["status"] == 0xA700
        assert stored_files(store) == []
    finally:
        node.stop()


def test_sop_classes_file_limits_what_is_accepted(tmp_path: Path) -> None:
    classes = tmp_path / "sop-classes.properties"
    classes.write_text("# CT only\nCTImageStorage:*\nVerification:1.2.840.10008.1.2\n")
    node = storescp(tmp_path, "-b", "PORT", "--directory", str(tmp_path / "in"), "--sop-classes", str(classes))
    try:
        mr = "1.2.840.10008.5.1.4.1.1.4"
        ct = "1.2.840.10008.5.1.4.1.1.2"
        assoc = associate(node.port, [(mr, ExplicitVRLittleEndian), (ct, ExplicitVRLittleEndian)])
        try:
            assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [ct]
        finally:
            assoc.release()
    finally:
        node.stop()


@pytest.mark.parametrize("argv, window", [
    ([], (0, 0)),  # dcm4che's default: unlimited
    (["--max-ops-invoked", "4", "--max-ops-performed", "2"], (4, 2)),
    (["--max-ops-invoked", "4", "--not-async"], (1, 1)),
])
def test_async_window_options_reach_the_node(tmp_path: Path, argv: list[str], window: tuple[int, int]) -> None:
    opts = storescp_tool.parser().parse_args(["-b", "11112", "--directory", str(tmp_path / "in"), *argv])
    network = storescp_tool.build_config(opts).network
    assert (network.max_ops_invoked, network.max_ops_performed) == window
