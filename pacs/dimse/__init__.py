"""DICOM upper-layer services (DIMSE) of the archive, on pynetdicom."""
