"""Send files' bytes unchanged with pynetdicom, print each C-STORE status as JSON.

Run as a subprocess (``python -m tests.raw_store host port file ...``) so that switching on
pynetdicom's process-wide ``STORE_SEND_CHUNKED_DATASET`` never leaks into the test process.
Sending from the path means the dataset after the file meta goes out byte for byte, which
is how a test delivers truncated or hostile datasets that no well-behaved SCU would build.
"""

from __future__ import annotations

import argparse
import json
import sys

from pydicom.filereader import read_file_meta_info

from tests.support import pynetdicom_settled


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--aet", default="RAWSCU")
    parser.add_argument("--aec", default="ANY-SCP")
    parser.add_argument("--timeout", type=float, default=30)
    opts = parser.parse_args()

    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=opts.aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = opts.timeout
    metas = [read_file_meta_info(f) for f in opts.files]
    for pair in dict.fromkeys((str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID)) for m in metas):
        ae.add_requested_context(pair[0], pair[1])
    assoc = ae.associate(opts.host, opts.port, ae_title=opts.aec)
    if not assoc.is_established:
        print(json.dumps({"association": "rejected" if assoc.is_rejected else "failed"}))
        return 1
    results = []
    for path in opts.files:
        pynetdicom_settled(assoc)
        status = assoc.send_c_store(path)
        results.append({"file": path, "status": int(status.Status) if "Status" in status else None})
    assoc.release()
    print(json.dumps({"association": "ok", "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
