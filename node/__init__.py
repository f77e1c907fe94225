"""The core of the DICOM node: configuration, messages, paths, storage and index logic.

Nothing in this package (outside ``node.tools``) opens a socket or imports pynetdicom or zmq:
the actors in ``actors/`` do the I/O and ask this package what to do.
"""

__version__ = "0.1.0"

# Who we are in every A-ASSOCIATE-RQ/AC the node and its tools send (PS3.7 D.3.3.2, PS3.8
# Annex D.3.3.2): a UID generated once under the 2.25 root (a UUID as a decimal integer, no
# registration needed) and never changed, and a version name of at most 16 characters. Files
# the node stores keep the sender's, as dcm4che's storescp writes them.
IMPLEMENTATION_CLASS_UID = "2.25.227943459240080982485928624773912024819"
IMPLEMENTATION_VERSION_NAME = f"NODECTL_{__version__}"


def identify(ae: object) -> object:
    """Give a pynetdicom ``AE`` the project's implementation class UID and version name."""
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID  # type: ignore[attr-defined]
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME  # type: ignore[attr-defined]
    return ae
