"""Regional central archive of medical images: DICOM ingest, object store, index."""

__version__ = "0.1.0"
