"""The core of the DICOM node: configuration, messages, paths, storage and index logic.

Nothing in this package (outside ``node.tools``) opens a socket or imports pynetdicom or zmq:
the actors in ``actors/`` do the I/O and ask this package what to do.
"""

__version__ = "0.1.0"
