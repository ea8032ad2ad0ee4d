"""The archive's Application Entity: every storage SOP class, every transfer syntax as sent."""

from __future__ import annotations

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs.config import Settings
from pacs.dimse.part10 import IMPLEMENTATION_VERSION_NAME
from pacs.dimse.policy import AEPolicy


def build_ae(settings: Settings, policy: AEPolicy) -> AE:
    """An acceptor AE configured from ``settings``.

    Every transfer syntax pydicom knows is accepted as proposed, so objects are stored exactly
    as the modality encoded them (no transcoding on ingest).
    """
    ae = AE(ae_title=settings.ae_title)
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.network_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.acse_timeout = settings.acse_timeout
    ae.require_called_aet = False
    if not policy.accept_any and policy.titles:
        # unknown titles get A-ASSOCIATE-RJ; a known title from the wrong host is aborted later
        ae.require_calling_aet = policy.titles
    ae.add_supported_context(Verification, AllTransferSyntaxes)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax:
            ae.add_supported_context(context.abstract_syntax, AllTransferSyntaxes)
    return ae
