"""Path patterns fed hostile attribute values never leave the store (hypothesis; PATH_CASES=20000 for more).

Whatever a peer puts into the attributes a ``--filepath`` pattern uses, the relative path
``relative_path_for`` returns is either refused (PathError, the node answers 0x0110) or, joined
to the store directory and resolved, stays inside it and outside ``.incoming``. The storage
layer checks the same again (``Store.final_path``); this test holds the first line alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from node.errors import PathError
from node.paths import FilePathPattern, relative_path_for

PATTERNS = [
    FilePathPattern.compile("{00100020}/{0020000D}/{0020000E}/{00080018}.dcm"),
    FilePathPattern.compile("{00100010}/{00080020}/{00080018}"),
    FilePathPattern.compile("{00100020,upper}{00100010}/{00080018}.dcm"),
]
NASTY = ["..", ".", "/", "../", "/..", "\\", "\x00", "~", ".incoming", "//", "%2e%2e", "..\\..", "\u2025", "\udcff"]
values = st.one_of(
    st.lists(st.sampled_from(NASTY), min_size=1, max_size=6).map("".join),
    st.text(max_size=80),
    st.text(alphabet=st.sampled_from("./\\x-_ "), max_size=40),
)
STORE = Path("/srv/store")


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on every invalid value: that is the point
@settings(max_examples=int(os.environ.get("PATH_CASES", "500")), deadline=None, database=None)
@given(patient_id=values, patient_name=values, study=values, sop=values, pattern=st.sampled_from(PATTERNS))
def test_no_attribute_value_leads_out_of_the_store(patient_id: str, patient_name: str, study: str, sop: str, pattern: FilePathPattern) -> None:
    ds = Dataset()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = study
    ds.StudyDate = study
    ds.SOPInstanceUID = sop
    try:
        relpath = relative_path_for(pattern, ds, sop or "1.2.3")
    except PathError:
        return
    except (ValueError, TypeError):
        return  # pydicom refusing the value is a refusal too (the worker answers a failure)
    assert not os.path.isabs(relpath), relpath
    joined = Path(os.path.normpath(STORE / relpath))
    assert joined.is_relative_to(STORE) and joined != STORE, relpath
    assert not joined.is_relative_to(STORE / ".incoming"), relpath
