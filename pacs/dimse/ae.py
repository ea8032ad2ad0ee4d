"""The archive's Application Entity: every storage SOP class, every transfer syntax as sent.

The storage SOP classes are those of the acceptance rule (``pacs.ingest.acceptance``), so
an association accepts exactly what ingest stores, retired SOP classes included.
"""

from __future__ import annotations

from pydicom.uid import (
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs.config import Settings
from pacs.dimse.commitment import STORAGE_COMMITMENT_PUSH_MODEL
from pacs.dimse.find import FIND_SOP_CLASSES
from pacs.dimse.mpps import MODALITY_PERFORMED_PROCEDURE_STEP
from pacs.dimse.policy import AEPolicy
from pacs.dimse.scu import archive_ae
from pacs.dimse.worklist import MODALITY_WORKLIST_FIND
from pacs.ingest.acceptance import STORAGE_SOP_CLASSES

_LOSSLESS_COMPRESSED = [
    JPEGLSLossless,
    JPEG2000Lossless,
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 multi-component, lossless only
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless only
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless only, RPCL
    JPEGLosslessSV1,
    "1.2.840.10008.1.2.4.57",  # JPEG lossless, process 14
    RLELossless,
    DeflatedExplicitVRLittleEndian,
]
_NATIVE = [ExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian]

ACCEPTED_TRANSFER_SYNTAXES: list[str] = [
    *_LOSSLESS_COMPRESSED,
    *_NATIVE,
    *(uid for uid in AllTransferSyntaxes if uid not in _LOSSLESS_COMPRESSED + _NATIVE),
]
"""Every transfer syntax pydicom knows, in the order the acceptor prefers when a requestor
offers several in one presentation context: lossless compressed (keeps the modality's
encoding and saves space), then native, then lossy (never chosen over a lossless offer)."""


RETRIEVE_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.2.1.2",  # Patient Root Query/Retrieve Information Model - MOVE
    "1.2.840.10008.5.1.4.1.2.2.2",  # Study Root Query/Retrieve Information Model - MOVE
    "1.2.840.10008.5.1.4.1.2.1.3",  # Patient Root Query/Retrieve Information Model - GET
    "1.2.840.10008.5.1.4.1.2.2.3",  # Study Root Query/Retrieve Information Model - GET
)
"""Abstract syntaxes of the Query/Retrieve SCP's MOVE and GET services."""


def build_ae(settings: Settings, policy: AEPolicy) -> AE:
    """An acceptor AE configured from ``settings``.

    Every transfer syntax pydicom knows is accepted as proposed, so objects are stored exactly
    as the modality encoded them (no transcoding on ingest).
    """
    ae = archive_ae(settings)
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.maximum_associations = settings.max_associations
    ae.require_called_aet = False
    if not policy.accept_any and policy.titles:
        # unknown titles get A-ASSOCIATE-RJ; a known title from the wrong host is aborted later
        ae.require_calling_aet = policy.titles
    ae.add_supported_context(Verification, ACCEPTED_TRANSFER_SYNTAXES)
    for sop_class in FIND_SOP_CLASSES:
        ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for sop_class in sorted(STORAGE_SOP_CLASSES):
        # SCP/SCU role selection accepted: a C-GET requestor takes the Storage SCP role
        ae.add_supported_context(
            sop_class, ACCEPTED_TRANSFER_SYNTAXES, scu_role=True, scp_role=True
        )
    for sop_class in RETRIEVE_SOP_CLASSES:
        ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for sop_class in (
        MODALITY_WORKLIST_FIND,
        MODALITY_PERFORMED_PROCEDURE_STEP,
        STORAGE_COMMITMENT_PUSH_MODEL,
    ):
        ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae
