"""All settings of the archive in one pydantic-settings class.

Every field is read from an environment variable ``PACS_<NAME>`` (e.g. ``PACS_DICOM_PORT``);
the CLI flags of ``pacs serve`` override them. ``docs/configuration.md`` lists them all.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class DuplicatePolicy(StrEnum):
    """What to do when a different object arrives with an already stored SOP Instance UID."""

    REJECT = "reject"  # keep the first, answer failure 0x0111 (Duplicate SOP Instance), log it
    KEEP = "keep"  # keep the first, answer success with warning 0xB000-range status, log it
    OVERWRITE = "overwrite"  # replace the stored object with the new one, log it


class FsyncPolicy(StrEnum):
    """When the filesystem object store calls fsync."""

    ALWAYS = "always"  # file and directory fsynced before success: survives power loss
    NEVER = "never"  # OS page cache only: survives a process crash, not a power cut


class Settings(BaseSettings):
    """Configuration of every archive process (SCP, HTTP API, worker, CLI)."""

    model_config = SettingsConfigDict(env_prefix="PACS_", env_file=None, extra="ignore")

    data_dir: Path = Field(Path("./var"), description="Root of the embedded database and store.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite under data_dir (index.sqlite3)."
    )
    database_pool_size: int = Field(10, description="Connections per process (PostgreSQL).")
    storage_url: str | None = Field(
        None, description="file:///path or s3://bucket/prefix; default file under data_dir/objects."
    )
    storage_fsync: FsyncPolicy = Field(FsyncPolicy.ALWAYS, description="Filesystem fsync policy.")
    s3_endpoint: str = Field("127.0.0.1:9000", description="S3 endpoint host:port (MinIO).")
    s3_access_key: str = Field("minioadmin", description="S3 access key.")
    s3_secret_key: str = Field("minioadmin", description="S3 secret key.")
    s3_region: str | None = Field(None, description="S3 region, if the endpoint needs one.")
    s3_secure: bool = Field(False, description="Use HTTPS towards the S3 endpoint.")

    host: str = Field("127.0.0.1", description="Address the DICOM and HTTP servers bind to.")
    dicom_port: int = Field(11112, description="DICOM (DIMSE) port.")
    ae_title: str = Field("PACS", description="The archive's own AE title.")
    http_port: int = Field(8000, description="HTTP port (DICOMweb, FHIR, API, UI).")
    public_base_url: str | None = Field(
        None,
        description=(
            "URL clients reach the HTTP API at (behind a proxy); DICOMweb RetrieveURLs are "
            "built from it. Default: the URL of each request."
        ),
    )
    scp_processes: int = Field(
        0, description="DICOM server processes sharing the port; 0 = one per CPU core."
    )
    max_pdu_size: int = Field(
        0, description="Maximum PDU length the SCP accepts; 0 = unlimited (fewest PDUs)."
    )
    max_associations: int = Field(64, description="Concurrent associations per SCP process.")
    network_timeout: float = Field(60.0, description="Seconds of silence before an abort.")
    dimse_timeout: float = Field(60.0, description="Seconds to wait for a DIMSE message.")
    acse_timeout: float = Field(30.0, description="Seconds to wait for association messages.")
    max_object_size: int = Field(
        2 * 1024**3, description="Largest object (bytes) accepted; larger ones are refused."
    )
    accept_any_ae: bool = Field(
        True, description="Accept associations from any calling AE (embedded default)."
    )
    allowed_aes: str = Field(
        "",
        description=(
            "Comma-separated allow-list TITLE@host[=Organisation]; host '*' matches any address."
        ),
    )
    duplicate_policy: DuplicatePolicy = Field(
        DuplicatePolicy.REJECT, description="Different object with a stored SOP Instance UID."
    )
    log_level: str = Field("INFO", description="Python logging level.")
    log_phi: bool = Field(False, description="Allow patient identifiers in logs (never default).")

    @field_validator("ae_title")
    @classmethod
    def _valid_ae_title(cls, value: str) -> str:
        """PS3.5 AE VR: 1-16 characters of the default (ASCII) repertoire, no backslash and
        no control characters; leading and trailing spaces are not significant."""
        value = value.strip()
        if not 0 < len(value) <= 16 or "\\" in value:
            raise ValueError("ae_title must be 1-16 characters without backslash")
        if not all(" " <= char <= "~" for char in value):
            raise ValueError("ae_title must be printable ASCII (no control characters)")
        return value

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        """The object store URL, defaulting to ``data_dir/objects``."""
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "objects").resolve().as_uri()

    @property
    def scp_process_count(self) -> int:
        """How many DICOM server processes to run."""
        return self.scp_processes or max(1, os.cpu_count() or 1)
