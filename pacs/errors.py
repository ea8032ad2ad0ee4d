"""The archive's exception hierarchy: one base class for the whole ``pacs`` package.

Every exception class defined in ``pacs`` derives from :class:`PacsError`, directly or through
its subpackage's base (``JobError``, ``AERegistryError``, ``QueryError``, ``FhirError``,
``EmrLinkError``); some also derive from the builtin they refine (``ValueError``,
``LookupError``). The other packages have their own base: ``inference.errors.InferenceError``
for the AI service; ``viewer_api``'s exceptions (``QidoError``, ``MultipartError``,
``NotAcceptable``, ...) are HTTP-layer errors answered with a status code inside
``viewer_api`` and never leave it.
"""


class PacsError(Exception):
    """Base class of every error raised by the archive."""


class InvalidDicomError(PacsError, ValueError):
    """The data is not a DICOM object the archive can store (bad bytes, missing or bad UIDs)."""


class SOPClassNotSupportedError(InvalidDicomError):
    """The data set's SOP Class UID is not a storage SOP class of the archive."""


class StorageError(PacsError):
    """The object store failed to write, read or delete an object."""


class IdentityConflictError(PacsError):
    """An object names a UID that the index holds for another patient, study or series.

    The message names the UID and the attributes that conflict, never their values.
    """
