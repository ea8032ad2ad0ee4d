"""FHIR R4 server core: versioned resources with search indexes in the index database."""
