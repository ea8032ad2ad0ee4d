"""Model registry: ``<root>/<name>/<version>/model.onnx`` + ``manifest.json``.

The manifest (:class:`Manifest`) says what the model is, what it expects and what it returns;
its ``sha256`` is the digest of ``model.onnx``. :meth:`ModelRegistry.load` verifies the digest
before onnxruntime reads a byte of the model and refuses a mismatch. Sessions are cached per
process (one per model file and digest); the CUDA execution provider is used when onnxruntime
has it, the CPU one otherwise; thread counts come from ``PACS_INFERENCE_THREADS``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from inference.errors import InferenceError

logger = logging.getLogger(__name__)

DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class ModelRegistryError(InferenceError):
    """A model that is missing, malformed or fails its digest check."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Code(_Strict):
    """A coded concept (DICOM code sequence item): SNOMED CT by default."""

    value: str
    scheme: str = "SCT"
    meaning: str


class IntensityTransform(_Strict):
    """``out = clip(HU + offset, clip_min, clip_max) * scale + shift`` (None: no bound)."""

    offset: float = 0.0
    clip_min: float | None = None
    clip_max: float | None = None
    scale: float = 1.0
    shift: float = 0.0


class InputSpec(_Strict):
    """What the network reads: N x C x H x W slices of the volume resampled as described."""

    axes: Literal["NCHW"] = "NCHW"
    orientation: Literal["LPS"] = "LPS"
    spacing_mm: tuple[float | None, float | None, float | None] | None = Field(
        None, description="(x, y, z) resampling grid; None or a None entry: native spacing."
    )
    slice_size: tuple[int, int] | None = Field(
        None, description="Fixed (H, W) slice; None: any size padded to size_multiple."
    )
    size_multiple: int = Field(8, ge=1, description="H and W are padded to a multiple of it.")
    context_slices: int = Field(0, ge=0, description="Slices each side stacked as channels.")
    intensity: IntensityTransform
    pad_value_hu: float = -1024.0
    batch_size: int = Field(16, ge=1, description="Slices per onnxruntime call.")


class OutputLabel(_Strict):
    """One output channel of the network."""

    channel: int = Field(ge=0)
    name: str
    code: Code


class OutputSpec(_Strict):
    activation: Literal["sigmoid", "none"] = "sigmoid"
    labels: list[OutputLabel] = Field(min_length=1)


class Thresholds(_Strict):
    """Post-processing: probability cut; which connected components are kept."""

    probability: float = Field(0.5, gt=0, lt=1)
    min_component_fraction: float = Field(
        0.05, ge=0, le=1, description="Drop components smaller than this share of the largest."
    )
    min_component_ml: float = Field(2.0, ge=0, description="Drop components smaller than this.")
    gas_median_hu: float | None = Field(
        -970.0,
        description=(
            "Drop components whose median density is below this: bowel or stomach gas and "
            "outside air are air (about -1000 HU), lung parenchyma is air and tissue (about "
            "-850 HU, rarely below -950 even in emphysema). None: no such check."
        ),
    )
    grow_aerated_mm: float = Field(
        0.0,
        ge=0,
        description=(
            "Grow each lung side this far (3 x 3 x 3 steps on the model grid) into body voxels "
            "of aerated density (-990..-500 HU) next to it: the thin lung the network misses. "
            "0: no growth."
        ),
    )


def binary_lung_mask() -> dict[str, object]:
    """The ``output`` and ``thresholds`` of a manifest for a one-channel sigmoid lung mask
    (SNOMED CT 39607008 Lung), fresh each call."""
    lung = {"value": "39607008", "scheme": "SCT", "meaning": "Lung"}
    return {
        "output": {
            "activation": "sigmoid",
            "labels": [{"channel": 0, "name": "lung", "code": lung}],
        },
        "thresholds": {"probability": 0.5, "min_component_fraction": 0.05},
    }


class Manifest(_Strict):
    """Everything a model file needs to be run and understood."""

    name: str
    version: str
    sha256: str
    task: Literal["lung-segmentation"]
    input: InputSpec
    output: OutputSpec
    thresholds: Thresholds
    intended_use: str = Field(min_length=1)
    training_data: str = Field(min_length=1)
    evaluation: dict[str, Any]
    licence: str = Field(min_length=1)

    @field_validator("name", "version")
    @classmethod
    def _safe_path_part(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be 1-64 of a-z 0-9 . _ - (lower case), not starting with . _ -")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("must be 64 lower-case hexadecimal digits")
        return value


@dataclass(frozen=True)
class LoadedModel:
    """A verified manifest and its onnxruntime session."""

    manifest: Manifest
    session: Any  # onnxruntime.InferenceSession


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-_]", version))


_sessions: dict[tuple[str, str, int], Any] = {}
_sessions_lock = threading.Lock()


def _session(path: Path, digest: str, threads: int) -> Any:
    import onnxruntime as ort

    key = (str(path.resolve()), digest, threads)
    with _sessions_lock:
        if key not in _sessions:
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider",) if p in available]
            providers.append("CPUExecutionProvider")
            _sessions[key] = ort.InferenceSession(
                str(path), sess_options=options, providers=providers
            )
            logger.info("loaded model %s (providers %s)", path, ",".join(providers))
        return _sessions[key]


class ModelRegistry:
    """The models under ``root`` (default: ``PACS_MODELS_DIR`` or the repository's ``models/``)."""

    def __init__(self, root: Path | None = None, threads: int | None = None) -> None:
        if root is None or threads is None:
            from pacs.config import Settings

            settings = Settings.model_validate({})
            root = root or settings.models_dir or DEFAULT_MODELS_DIR
            threads = settings.inference_threads if threads is None else threads
        self.root = Path(root)
        self.threads = threads

    def _dir(self, name: str, version: str) -> Path:
        for part in (name, version):
            if not _NAME.match(part):
                raise ModelRegistryError(f"invalid model name or version {part!r}")
        return self.root / name / version

    def read_manifest(self, name: str, version: str) -> Manifest:
        """The manifest of one version, validated (not the model file)."""
        path = self._dir(name, version) / MANIFEST_FILE
        if not path.is_file():
            raise ModelRegistryError(f"no model {name} {version}: {path} is missing")
        try:
            manifest = Manifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, ValidationError) as exc:
            raise ModelRegistryError(f"invalid manifest {path}: {exc}") from exc
        if (manifest.name, manifest.version) != (name, version):
            raise ModelRegistryError(
                f"manifest {path} names {manifest.name} {manifest.version}, not {name} {version}"
            )
        return manifest

    def versions(self, name: str) -> list[str]:
        """Versions of ``name`` that have a manifest, oldest first."""
        base = self.root / name
        if not base.is_dir():
            return []
        found = [p.name for p in base.iterdir() if (p / MANIFEST_FILE).is_file()]
        return sorted(found, key=_version_key)

    def list(self) -> list[Manifest]:
        """Every registered model version (invalid manifests are logged and skipped)."""
        out: list[Manifest] = []
        if not self.root.is_dir():
            return out
        for name_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for version in self.versions(name_dir.name):
                try:
                    out.append(self.read_manifest(name_dir.name, version))
                except ModelRegistryError as exc:
                    logger.warning("skipping %s", exc)
        return out

    def resolve(self, name: str, version: str | None = None) -> str:
        """``version``, or the newest registered version of ``name``."""
        if version:
            return version
        versions = self.versions(name)
        if not versions:
            raise ModelRegistryError(f"no model named {name!r} under {self.root}")
        return versions[-1]

    def verify(self, name: str, version: str | None = None) -> Manifest:
        """Manifest of a version whose model file matches its SHA-256, else an error."""
        version = self.resolve(name, version)
        manifest = self.read_manifest(name, version)
        model = self._dir(name, version) / MODEL_FILE
        if not model.is_file():
            raise ModelRegistryError(f"model {name} {version}: {model} is missing")
        actual = sha256_file(model)
        if actual != manifest.sha256:
            raise ModelRegistryError(
                f"model {name} {version}: SHA-256 of {MODEL_FILE} is {actual}, the manifest "
                f"says {manifest.sha256}; refusing to load a changed or corrupted model"
            )
        return manifest

    def load(self, name: str, version: str | None = None) -> LoadedModel:
        """Verify the digest, then return the (per-process cached) onnxruntime session."""
        manifest = self.verify(name, version)
        path = self._dir(manifest.name, manifest.version) / MODEL_FILE
        try:
            session = _session(path, manifest.sha256, self.threads)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelRegistryError(f"model {name} {manifest.version}: {exc}") from exc
        return LoadedModel(manifest, session)

    def register(
        self, model_file: Path, manifest: dict[str, Any] | Manifest, *, replace: bool = False
    ) -> Manifest:
        """Copy ``model_file`` into ``<root>/<name>/<version>/`` with its manifest; the digest
        is computed here (a ``sha256`` given in ``manifest`` must match it)."""
        data = (
            manifest.model_dump(mode="json") if isinstance(manifest, Manifest) else dict(manifest)
        )
        digest = sha256_file(Path(model_file))
        if data.get("sha256") and data["sha256"] != digest:
            raise ModelRegistryError(
                f"{model_file}: SHA-256 is {digest}, the manifest says {data['sha256']}"
            )
        data["sha256"] = digest
        try:
            checked = Manifest.model_validate(data)
        except ValidationError as exc:
            raise ModelRegistryError(f"invalid manifest: {exc}") from exc
        _check_onnx(Path(model_file), checked)
        dest = self._dir(checked.name, checked.version)
        if dest.exists() and not replace:
            raise ModelRegistryError(f"model {checked.name} {checked.version} already registered")
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copyfile(model_file, tmp / MODEL_FILE)
        (tmp / MANIFEST_FILE).write_text(
            json.dumps(checked.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8"
        )
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        logger.info("registered model %s %s", checked.name, checked.version)
        return checked


def _check_onnx(path: Path, manifest: Manifest) -> None:
    """The file is an ONNX model whose one input has as many channels as the manifest says."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ...
        raise ModelRegistryError(f"{path} is not a valid ONNX model: {exc}") from exc
    inputs = [
        i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    if len(inputs) != 1:
        raise ModelRegistryError(f"{path}: expected one input, found {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    channels = 2 * manifest.input.context_slices + 1
    if len(dims) != 4 or (dims[1].HasField("dim_value") and dims[1].dim_value != channels):
        raise ModelRegistryError(
            f"{path}: input must be N x {channels} x H x W for context_slices="
            f"{manifest.input.context_slices}"
        )
