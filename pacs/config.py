"""All settings of the archive in one pydantic-settings class.

Every field is read from an environment variable ``PACS_<NAME>`` (e.g. ``PACS_DICOM_PORT``);
the CLI flags of ``pacs serve`` override them. ``docs/configuration.md`` lists them all. Lists and
maps are written in the environment as comma-separated strings and parsed here, once, into typed
values (an invalid entry stops the process with the entry named).
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class DuplicatePolicy(StrEnum):
    """What to do when a different object arrives with an already stored SOP Instance UID."""

    REJECT = "reject"  # keep the first, answer failure 0x0111 (Duplicate SOP Instance), log it
    KEEP = "keep"  # keep the first, answer success with warning 0xB000-range status, log it
    OVERWRITE = "overwrite"  # replace the stored object with the new one, log it


class IdentityConflictPolicy(StrEnum):
    """What to do with an object whose UIDs the index holds for another patient."""

    REJECT = "reject"  # refuse it: C-STORE 0xA900 with an ErrorComment, STOW-RS 409
    QUARANTINE = "quarantine"  # hold it out of every query and retrieve for an administrator


class FsyncPolicy(StrEnum):
    """When the filesystem object store calls fsync."""

    ALWAYS = "always"  # file and directory fsynced before success: survives power loss
    NEVER = "never"  # OS page cache only: survives a process crash, not a power cut


class AuthMode(StrEnum):
    """How HTTP callers are authenticated."""

    LOCAL = "local"  # accounts in the index database, tokens the archive signs (embedded default)
    OIDC = "oidc"  # bearer JWTs of an OpenID Connect provider (Keycloak); web login with PKCE
    NONE = "none"  # open access as a local administrator: only when bound to a loopback address


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
"""The bind addresses ``PACS_AUTH=none`` is allowed with."""

SIGNING_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
"""The asymmetric JWS algorithms ``PACS_OIDC_ALGORITHMS`` may pin (never ``none`` nor HMAC)."""


def parse_algorithms(text: str) -> tuple[str, ...]:
    """``"RS256,ES256"`` -> the pinned JWS algorithms; ValueError on ``none``, HMAC or unknown."""
    algorithms = tuple(_entries(text))
    bad = [alg for alg in algorithms if alg not in SIGNING_ALGORITHMS]
    if bad or not algorithms:
        raise ValueError(
            f"unsupported JWS algorithm(s) {bad or 'none given'}: "
            f"choose from {', '.join(sorted(SIGNING_ALGORITHMS))}"
        )
    return algorithms


class PnMatching(StrEnum):
    """How a C-FIND / QIDO-RS Person Name key matches the ``^`` components of a name."""

    WHOLE = "whole"  # the key matches the whole name string (PS3.4 C.2.2.2.1, literal '^')
    COMPONENTS = "components"  # each key component matches the same component; missing = any


@dataclass(frozen=True, slots=True)
class KnownAE:
    """An allowed peer: AE title, host ('*' = any address) and the organisation it belongs to."""

    title: str
    host: str = "*"
    organisation: str = ""

    @classmethod
    def parse(cls, text: str) -> KnownAE:
        """Parse ``TITLE[@host][=Organisation]``."""
        spec, _, organisation = text.partition("=")
        title, _, host = spec.partition("@")
        title = title.strip()
        if not 0 < len(title) <= 16 or "\\" in title:
            raise ValueError(f"invalid AE title in allow-list entry {text!r}")
        return cls(title=title, host=host.strip() or "*", organisation=organisation.strip())


def _entries(text: str) -> list[str]:
    """The non-blank entries of a comma-separated setting, stripped."""
    return [entry for entry in (part.strip() for part in text.split(",")) if entry]


def parse_ae_list(text: str) -> tuple[KnownAE, ...]:
    """``"CT1@10.1.2.3=Clinic,MR2"`` -> the allow-list entries; ValueError on a bad title."""
    return tuple(KnownAE.parse(entry) for entry in _entries(text))


def parse_ae_periods(text: str) -> dict[str, float]:
    """``"CT1=60,MR2=300"`` -> ``{"CT1": 60.0, "MR2": 300.0}``; ValueError on bad entries."""
    periods: dict[str, float] = {}
    for entry in _entries(text):
        title, sep, seconds = entry.rpartition("=")
        try:
            value = float(seconds)
        except ValueError:
            value = math.nan
        if not sep or not title.strip() or not math.isfinite(value) or value < 0:
            raise ValueError(f"bad entry {entry!r}: expected AE_TITLE=seconds (seconds >= 0)")
        periods[title.strip()] = value
    return periods


def parse_organisation_map(text: str) -> dict[str, tuple[str, ...]]:
    """``"RadCentre=ClinicA|ClinicB,Tele=ClinicC"`` -> ``{"RadCentre": ("ClinicA", "ClinicB"),
    "Tele": ("ClinicC",)}``; ValueError on bad entries."""
    mapping: dict[str, tuple[str, ...]] = {}
    for entry in _entries(text):
        key, sep, values = entry.partition("=")
        targets = tuple(v.strip() for v in values.split("|") if v.strip())
        if not sep or not key.strip() or not targets:
            raise ValueError(f"bad entry {entry!r}: expected NAME=VALUE[|VALUE...]")
        mapping[key.strip()] = mapping.get(key.strip(), ()) + targets
    return mapping


def parse_limits(text: str) -> dict[str, int]:
    """``"ct-chest=1,test=4"`` -> ``{"ct-chest": 1, "test": 4}``; ValueError on bad entries."""
    limits: dict[str, int] = {}
    for entry in _entries(text):
        name, sep, count = entry.partition("=")
        if not sep or not name.strip() or not count.strip().isdigit() or int(count) < 1:
            raise ValueError(f"bad limit {entry!r}: expected ANALYSIS=count (count >= 1)")
        limits[name.strip()] = int(count)
    return limits


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """``"127.0.0.0/8,10.1.2.3"`` -> networks; ValueError naming a bad entry."""
    networks: list[IPNetwork] = []
    for entry in _entries(text):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"bad network {entry!r}: expected an IP address or CIDR") from None
    return tuple(networks)


def parse_pairs(text: str) -> dict[str, str]:
    """``"CT1=ct1.example.org,MR2=mr2"`` -> ``{"CT1": "ct1.example.org", ...}``."""
    pairs: dict[str, str] = {}
    for entry in _entries(text):
        key, sep, value = entry.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"bad entry {entry!r}: expected KEY=value")
        pairs[key.strip()] = value.strip()
    return pairs


Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
"""A duration in seconds (finite, not negative)."""
Count = Annotated[int, Field(ge=1)]
"""A positive count."""

_PARSERS: dict[str, Callable[[str], object]] = {
    "allowed_aes": parse_ae_list,
    "cors_origins": lambda text: tuple(_entries(text)),
    "oidc_algorithms": parse_algorithms,
    "webhook_urls": lambda text: tuple(_entries(text)),
    "stable_after_seconds_by_ae": parse_ae_periods,
    "worker_analysis_limits": parse_limits,
    "webhook_allowed_networks": parse_networks,
    "dicom_tls_ae_certificates": parse_pairs,
    "dicom_tls_peers": lambda text: tuple(_entries(text)),
    "worklist_station_organisations": parse_organisation_map,
    "ian_destinations": lambda text: tuple(_entries(text)),
    "radiologist_reads_for": parse_organisation_map,
    "move_routes": parse_organisation_map,
}


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
    s3_access_key: str = Field(
        "", description="S3 access key; required with an s3:// storage_url (no default)."
    )
    s3_secret_key: str = Field(
        "", description="S3 secret key; required with an s3:// storage_url (no default)."
    )
    s3_region: str | None = Field(None, description="S3 region, if the endpoint needs one.")
    s3_secure: bool = Field(False, description="Use HTTPS towards the S3 endpoint.")

    host: str = Field("127.0.0.1", description="Address the DICOM and HTTP servers bind to.")
    dicom_port: int = Field(11112, description="DICOM (DIMSE) port.")
    ae_title: str = Field("PACS", description="The archive's own AE title.")
    http_port: int = Field(8000, description="HTTP port (DICOMweb, FHIR, API, UI).")
    tls_certificate: Path | None = Field(
        None, description="PEM certificate (chain) of the HTTP server: `pacs serve` speaks HTTPS."
    )
    tls_key: Path | None = Field(None, description="PEM private key of tls_certificate.")
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description=(
            "Comma-separated proxy addresses (or '*') whose X-Forwarded-For/-Proto headers "
            "are trusted (uvicorn forwarded_allow_ips)."
        ),
    )
    content_security_policy: str = Field(
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'",
        description="Content-Security-Policy of HTML responses ('' to leave it out).",
    )
    frame_options: str = Field(
        "DENY", description="X-Frame-Options of HTML responses ('' to leave it out)."
    )
    dicom_tls_port: int = Field(
        2762, description="DICOM TLS port (PS3.15 secure transport), served with a certificate."
    )
    dicom_tls_certificate: Path | None = Field(
        None, description="PEM certificate (chain) of the DICOM TLS listener; set with the key."
    )
    dicom_tls_key: Path | None = Field(None, description="PEM private key of the DICOM TLS port.")
    dicom_tls_client_ca: Path | None = Field(
        None, description="PEM CA bundle: DICOM TLS clients must present a certificate from it."
    )
    dicom_tls_match_ae: bool = Field(
        False,
        description=(
            "The calling AE title must match the client certificate (CN, a DNS SAN, or "
            "dicom_tls_ae_certificates)."
        ),
    )
    dicom_tls_ae_certificates: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Extra AE title to certificate CN mapping, 'TITLE=cn,TITLE2=cn2'.",
    )
    dicom_tls_peers: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Remote AE titles the archive sends to (C-STORE, C-MOVE) over TLS."
    )
    public_base_url: str | None = Field(
        None,
        description=(
            "URL clients reach the HTTP API at (behind a proxy); DICOMweb RetrieveURLs are "
            "built from it. Default: the URL of each request."
        ),
    )
    auth: AuthMode = Field(
        AuthMode.LOCAL,
        description=(
            "HTTP authentication: 'local' (accounts and tokens of the archive), 'oidc' (an "
            "OpenID Connect provider) or 'none' (open, as local admin; only on 127.0.0.1)."
        ),
    )
    token_ttl_seconds: int = Field(
        3600, ge=60, description="Lifetime of a token `pacs token` or the local login issues."
    )
    session_ttl_seconds: int = Field(
        8 * 3600, ge=60, description="Lifetime of a web session (the pacs_session cookie)."
    )
    token_signing_key_file: Path | None = Field(
        None,
        description=(
            "Private key (JWK, mode 0600) the archive signs its tokens and sessions with; "
            "created on first use; default data_dir/token-signing-key.jwk. Share it between "
            "the API nodes of one archive."
        ),
    )
    oidc_issuer: str = Field(
        "", description="OIDC issuer URL (PACS_AUTH=oidc); discovery at /.well-known/..."
    )
    oidc_audience: str = Field(
        "pacs-api", description="The `aud` a bearer token of the OIDC issuer must carry."
    )
    oidc_web_client_id: str = Field(
        "pacs-web", description="Public OIDC client of the web login (code flow with PKCE)."
    )
    oidc_algorithms: Annotated[tuple[str, ...], NoDecode] = Field(
        ("RS256", "ES256"), description="Comma-separated JWS algorithms accepted (never none)."
    )
    oidc_jwks_cache_seconds: float = Field(
        300.0, ge=0, description="Seconds the issuer's discovery document and JWKS are cached."
    )
    oidc_jwks_min_refresh_seconds: float = Field(
        10.0,
        ge=0,
        description="Least seconds between JWKS refetches for an unknown key id (rotation).",
    )
    oidc_name_claim: str = Field(
        "preferred_username", description="Claim naming the user (default: falls back to sub)."
    )
    oidc_roles_claim: str = Field(
        "realm_access.roles", description="Claim (dotted path) holding the archive's role names."
    )
    oidc_organisation_claim: str = Field(
        "organisation", description="Claim (dotted path) naming the subject's organisation."
    )
    oidc_practitioner_claim: str = Field(
        "practitioner", description="Claim (dotted path) with the FHIR Practitioner id."
    )
    oidc_patient_claim: str = Field(
        "patient", description="Claim (dotted path) with a patient user's patient identifier."
    )
    oidc_reads_for_claim: str = Field(
        "",
        description=(
            "Claim (dotted path; array or space/comma-separated) naming the other organisations "
            "a radiologist reads for; empty = off (only PACS_RADIOLOGIST_READS_FOR)."
        ),
    )
    scp_processes: int = Field(
        0, description="DICOM server processes sharing the port; 0 = one per CPU core."
    )
    max_pdu_size: int = Field(
        1024 * 1024,
        ge=4096,
        le=64 * 1024 * 1024,
        description=(
            "Maximum PDU length the SCP announces and accepts (bytes); a longer PDU is aborted "
            "before it is read."
        ),
    )
    max_associations: int = Field(
        64, ge=1, description="Concurrent associations per SCP process (beyond: A-ASSOCIATE-RJ)."
    )
    scp_memory_budget: int = Field(
        1024**3,
        ge=1024 * 1024,
        description=(
            "Bytes of received C-STORE data sets one SCP process holds at once; a C-STORE "
            "beyond it is refused 0xA700 (one object up to max_object_size is always taken)."
        ),
    )
    network_timeout: float = Field(60.0, description="Seconds of silence before an abort.")
    dimse_timeout: float = Field(60.0, description="Seconds to wait for a DIMSE message.")
    acse_timeout: float = Field(30.0, description="Seconds to wait for association messages.")
    max_object_size: int = Field(
        2 * 1024**3, description="Largest object (bytes) accepted; larger ones are refused."
    )
    refuse_hostless_aes: bool = Field(
        False,
        description="Refuse to start when an allowed_aes entry has no host (default: warn).",
    )
    accept_any_ae: bool = Field(
        True, description="Accept associations from any calling AE (embedded default)."
    )
    allowed_aes: Annotated[tuple[KnownAE, ...], NoDecode] = Field(
        (),
        description=(
            "Comma-separated allow-list TITLE@host[=Organisation]; host '*' matches any address."
        ),
    )
    radiologist_reads_for: Annotated[dict[str, tuple[str, ...]], NoDecode] = Field(
        default_factory=dict,
        description=(
            "Organisations whose studies radiologists of an organisation read, "
            "'RadOrg=ClinicA|ClinicB,Tele=ClinicC' (besides their own)."
        ),
    )
    move_routes: Annotated[dict[str, tuple[str, ...]], NoDecode] = Field(
        default_factory=dict,
        description=(
            "Extra C-MOVE destinations per requesting organisation, 'OrgA=AE1|AE2' "
            "(besides the registered AEs of the requester's own organisation)."
        ),
    )
    duplicate_policy: DuplicatePolicy = Field(
        DuplicatePolicy.REJECT, description="Different object with a stored SOP Instance UID."
    )
    identity_conflict: IdentityConflictPolicy = Field(
        IdentityConflictPolicy.REJECT,
        description=(
            "A UID already held by another patient (or SOP Instance in another series): "
            "'reject' it or 'quarantine' it for an administrator (pacs quarantine)."
        ),
    )
    pn_component_matching: PnMatching = Field(
        PnMatching.WHOLE,
        description=(
            "C-FIND/QIDO-RS Person Name matching: 'whole' (the key matches the whole name) or "
            "'components' (each '^' component matches its own; components left out match any)."
        ),
    )
    qido_max_limit: int = Field(
        1000, ge=1, description="Most QIDO-RS results per response; a larger limit is clamped."
    )
    stow_max_parts: int = Field(
        10000, ge=1, description="Most parts (instances) of one STOW-RS request (413 above)."
    )
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Comma-separated origins allowed by CORS ('*' any); empty: CORS off."
    )
    http_max_json_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Largest request body of the JSON API (/api, ...); 413 above it.",
    )
    fhir_max_body_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest FHIR request body (413 above it)."
    )
    fhir_max_bundle_entries: int = Field(
        1000, ge=1, description="Most entries of a FHIR batch/transaction Bundle (413 above)."
    )
    fhir_max_response_resources: int = Field(
        5000,
        ge=10,
        description=(
            "Most resources one FHIR response carries (a search page with its includes, all "
            "entries of a batch, $everything); beyond it pages shorten, includes are left "
            "out with a warning, or 422 too-costly."
        ),
    )
    fhir_default_count: int = Field(
        20, ge=1, le=1000, description="FHIR search page size when _count is not given."
    )
    emr_feed: bool = Field(
        True, description="Keep ImagingStudy and AI reports in FHIR in step with the archive."
    )
    emr_feed_interval: float = Field(
        1.0, gt=0, description="Seconds between change-feed polls of the EMR link when idle."
    )
    worklist_remove_on_arrival: bool = Field(
        False,
        description="Drop a worklist step once a study with its accession number arrives "
        "(default: once its referral is completed by a signed report).",
    )
    worklist_station_organisations: Annotated[dict[str, tuple[str, ...]], NoDecode] = Field(
        default_factory=dict,
        description="AEs that also serve other organisations' worklist items, "
        "'CT01=Clinic A|Clinic B,MR02=Clinic C' (besides their registered organisation).",
    )
    hl7_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="HL7 v2 MLLP listener port of `pacs serve` (orders ORM^O01 / OMI^O23 "
        "into the worklist); 0 = off.",
    )
    ian_destinations: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Registered AE titles (pacs ae add) that get an Instance Availability "
        "Notification (N-CREATE) when a study becomes stable; empty: none.",
    )
    study_lifecycle: bool = Field(
        True, description="Track study stability, record the change feed, run the sweeper."
    )
    stable_after_seconds: float = Field(
        30.0, ge=0, description="Quiet period after a study's last instance before it is stable."
    )
    stable_after_seconds_by_ae: Annotated[dict[str, Seconds], NoDecode] = Field(
        default_factory=dict, description="Per sending AE quiet periods, 'AE=seconds,AE2=seconds'."
    )
    rules_file: Path | None = Field(
        None, description="Routing rules (YAML/JSON); default: the built-in rule set."
    )
    sweep_interval_seconds: float = Field(
        0.25, gt=0, description="Seconds between sweeps for due studies and expired leases."
    )
    job_lease_seconds: float = Field(
        60.0, gt=0, description="Lease of a running job; renewed every third of it."
    )
    job_max_attempts: int = Field(5, ge=1, description="Attempts before a job is dead.")
    job_retry_base_seconds: float = Field(
        10.0, ge=0, description="Backoff before the first retry; doubles each attempt."
    )
    job_retry_max_seconds: float = Field(3600.0, ge=0, description="Longest retry backoff.")
    worker_concurrency: int = Field(1, ge=1, description="Jobs one worker process runs at once.")
    worker_analysis_limits: Annotated[dict[str, Count], NoDecode] = Field(
        default_factory=dict, description="Per analysis limits in one worker, 'ct-chest=1,test=4'."
    )
    worker_poll_seconds: float = Field(
        0.25, gt=0, description="Seconds an idle worker waits before looking for jobs again."
    )
    serve_worker: bool = Field(True, description="Run a job worker inside `pacs serve`.")
    webhook_urls: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Comma-separated URLs that receive the change feed (plus /api/webhooks)."
    )
    webhook_secret: str = Field(
        "", description="HMAC-SHA256 key of the webhook_urls signature header."
    )
    webhook_allowed_networks: Annotated[tuple[IPNetwork, ...], NoDecode] = Field(
        (),
        description=(
            "Comma-separated IPs/CIDRs webhook receivers may be in although internal "
            "(loopback, private, link-local); everything else internal is refused."
        ),
    )
    webhook_batch_size: int = Field(50, ge=1, description="Most events per webhook POST.")
    webhook_timeout: float = Field(10.0, gt=0, description="Seconds to wait for a receiver.")
    webhook_retry_base_seconds: float = Field(
        1.0, ge=0, description="Backoff after a failed delivery; doubles per failure."
    )
    webhook_retry_max_seconds: float = Field(600.0, ge=0, description="Longest webhook backoff.")
    log_level: str = Field("INFO", description="Python logging level.")
    log_phi: bool = Field(False, description="Allow patient identifiers in logs (never default).")
    audit_syslog_url: str = Field(
        "",
        description="Export every audit record as RFC 5424 syslog (ATNA): udp://host:514, "
        "tcp://host:port or tls://host:6514; empty: no export.",
    )
    audit_seal_interval: float = Field(
        1.0,
        gt=0,
        description="Seconds between seals of new audit records into the hash chain by the "
        "background loop of every archive process (the window in which a record is unsealed).",
    )
    models_dir: Path | None = Field(
        None, description="Root of the model registry; default the repository's models/."
    )
    inference_threads: int = Field(
        0, ge=0, description="onnxruntime intra-op threads per session; 0 = one per core."
    )
    inference_lung_model: str = Field("lung-seg", description="Registry name of the lung model.")
    inference_lung_model_version: str | None = Field(
        None, description="Version of the lung model; default the newest registered."
    )
    inference_min_slices: int = Field(10, ge=2, description="Fewest slices a volume may have.")
    inference_slice_spacing_tolerance: float = Field(
        0.05, gt=0, description="Largest relative deviation of a slice step from the median step."
    )
    inference_max_gantry_tilt_degrees: float = Field(
        0.5, ge=0, description="Largest angle between the slice normal and the slice steps."
    )
    inference_orientation_tolerance: float = Field(
        1e-3, gt=0, description="Largest difference of direction cosines between slices."
    )
    inference_emphysema_threshold_hu: float = Field(
        -950.0, description="Emphysema index: share of lung voxels below this HU."
    )
    inference_ggo_min_hu: float = Field(-750.0, description="Ground-glass band lower bound (HU).")
    inference_ggo_max_hu: float = Field(
        -300.0, description="Ground-glass band upper bound = consolidation lower bound (HU)."
    )
    inference_consolidation_max_hu: float = Field(
        100.0, description="Consolidation band upper bound (HU, inclusive)."
    )
    inference_vessel_max_diameter_mm: float = Field(
        5.0, gt=0, description="Dense lung structures thinner than this are vessels, excluded."
    )
    inference_vessel_halo_mm: float = Field(
        1.0, ge=0, description="Partial-volume rim around vessels excluded from the bands."
    )
    inference_ct1_min_percent: float = Field(
        0.5, ge=0, description="Involvement % from which the grade is CT-1 (below: CT-0)."
    )
    inference_ct2_min_percent: float = Field(25.0, description="Involvement % where CT-2 starts.")
    inference_ct3_min_percent: float = Field(50.0, description="Involvement % where CT-3 starts.")
    inference_ct4_min_percent: float = Field(75.0, description="Involvement % where CT-4 starts.")
    inference_ggo_normal_margin_hu: float = Field(
        200.0, ge=0, description="Ground glass starts this far above the patient's normal lung."
    )
    inference_ggo_min_limit_hu: float = Field(
        -650.0, description="Highest ground-glass lower bound the normal-lung margin may set (HU)."
    )
    inference_lung_rim_mm: float = Field(
        1.0, ge=0, description="Partial-volume rim at the lung edge (at least one voxel) excluded."
    )
    inference_lung_volume_min_ml: float = Field(
        1500.0, ge=0, description="Smallest total lung volume of a fully covered adult chest CT."
    )
    inference_lung_volume_max_ml: float = Field(
        10000.0, gt=0, description="Largest total lung volume of a fully covered adult chest CT."
    )
    inference_lung_found_min_ml: float = Field(
        50.0, ge=0, description="Less lung than this: no lung in the scan (not assessable)."
    )
    inference_coverage_end_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Lung in an end slice above this share of the largest "
        "slice's lung area: apex or base outside the scan (partial coverage).",
    )
    inference_lung_asymmetry_min_ratio: float = Field(
        0.7,
        ge=0,
        le=1,
        description="Smaller lung's volume below this share of the larger's (whole lungs): "
        "dense disease, effusion or collapse may lie outside the lung mask; volumes only.",
    )
    inference_air_hu: float = Field(-1000.0, description="Expected HU of air outside the body.")
    inference_air_tolerance_hu: float = Field(
        100.0,
        gt=0,
        description="Air outside the body further than this from -1000 HU: "
        "miscalibrated, not assessable.",
    )

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

    @field_validator(
        "tls_certificate",
        "tls_key",
        "dicom_tls_certificate",
        "dicom_tls_key",
        "dicom_tls_client_ca",
        mode="before",
    )
    @classmethod
    def _blank_path_is_unset(cls, value: Any) -> Any:
        """An empty variable (``PACS_DICOM_TLS_CLIENT_CA=``) leaves an optional file unset."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(*_PARSERS, mode="before")
    @classmethod
    def _parse_comma_separated(cls, value: Any, info: ValidationInfo) -> Any:
        """The environment's comma-separated form; typed values (e.g. from ``model_dump``) as
        they are."""
        if isinstance(value, str):
            assert info.field_name is not None
            return _PARSERS[info.field_name](value)
        return value

    @model_validator(mode="after")
    def _auth_is_safe(self) -> Settings:
        """Open access only on a loopback address; OIDC only with an issuer."""
        if self.auth is AuthMode.NONE and self.host not in LOOPBACK_HOSTS:
            raise ValueError(
                f"PACS_AUTH=none (open access) is refused on host {self.host!r}: bind to "
                "127.0.0.1, localhost or ::1, or use PACS_AUTH=local or oidc"
            )
        parse_algorithms(",".join(self.oidc_algorithms))  # also when given as a tuple
        if self.auth is AuthMode.OIDC and not self.oidc_issuer:
            raise ValueError("PACS_AUTH=oidc needs PACS_OIDC_ISSUER")
        return self

    @model_validator(mode="after")
    def _increasing_grade_bounds(self) -> Settings:
        """CT-1..CT-4 start at strictly increasing involvement percentages."""
        bounds = self.ct_grade_bounds
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("inference_ct1..ct4_min_percent must be strictly increasing")
        return self

    @model_validator(mode="after")
    def _complete_credentials(self) -> Settings:
        """No default credentials: S3 needs its keys, TLS its certificate and key together,
        and binding AE titles to certificates needs client certificates."""
        if (self.storage_url or "").startswith("s3://") and not (
            self.s3_access_key and self.s3_secret_key
        ):
            raise ValueError(
                "an s3:// storage_url needs PACS_S3_ACCESS_KEY and PACS_S3_SECRET_KEY "
                "(there are no default credentials)"
            )
        for cert, key, name in (
            (self.tls_certificate, self.tls_key, "tls"),
            (self.dicom_tls_certificate, self.dicom_tls_key, "dicom_tls"),
        ):
            if (cert is None) != (key is None):
                raise ValueError(f"{name}_certificate and {name}_key must be set together")
        if self.dicom_tls_match_ae and self.dicom_tls_client_ca is None:
            raise ValueError("dicom_tls_match_ae needs dicom_tls_client_ca (client certificates)")
        return self

    @property
    def dicom_tls(self) -> bool:
        """Whether the DICOM TLS listener runs (certificate and key are set)."""
        return self.dicom_tls_certificate is not None and self.dicom_tls_key is not None

    @property
    def ct_grade_bounds(self) -> tuple[float, float, float, float]:
        """Involvement % at which CT-1, CT-2, CT-3 and CT-4 start."""
        return (
            self.inference_ct1_min_percent,
            self.inference_ct2_min_percent,
            self.inference_ct3_min_percent,
            self.inference_ct4_min_percent,
        )

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"

    @property
    def resolved_signing_key_file(self) -> Path:
        """The archive's token signing key, defaulting to a file under ``data_dir``."""
        return self.token_signing_key_file or self.data_dir / "token-signing-key.jwk"

    @property
    def resolved_storage_url(self) -> str:
        """The object store URL, defaulting to ``data_dir/objects``."""
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "objects").resolve().as_uri()

    @classmethod
    def load(cls, **values: Any) -> Settings:
        """The environment's settings with ``values`` (CLI flags) over them; a ValueError whose
        message names each invalid setting's variable and what is wrong with it."""
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = (
                f"PACS_{str(error['loc'][0]).upper()}: {error['msg']}"
                if error["loc"]
                else error["msg"]
                for error in exc.errors()
            )
            raise ValueError("; ".join(problems)) from None

    @property
    def scp_process_count(self) -> int:
        """How many DICOM server processes to run."""
        return self.scp_processes or max(1, os.cpu_count() or 1)
