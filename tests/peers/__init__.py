"""Real DICOM peers for interop tests, each started on 127.0.0.1 and stopped by PID.

- ``orthanc``: Debian's ``/usr/sbin/Orthanc`` with a generated configuration in a temporary
  directory (free DICOM and HTTP ports, own AE title, storage and index there, a
  ``DicomModalities`` table), plus a small urllib REST client.
"""
