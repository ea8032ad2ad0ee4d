"""HTTP API of the archive: health, metrics, studies; DICOMweb and FHIR join here later."""
