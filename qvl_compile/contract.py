"""The export -> runtime contract: typed, versioned records of what an export folder holds (torch-free).

Export writes these dataclasses into `manifest.json`; the runtime parses them back and reads nothing
else. `FORMAT` changes with every change of the contract. Older folders are migrated explicitly
(`MIGRATIONS`, each tested) or refused with a one-line message saying to re-export.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from qvl_compile.errors import QvlError

FORMAT_PREFIX = "qvl-compile/"
FORMAT_VERSION = 3
FORMAT = f"{FORMAT_PREFIX}{FORMAT_VERSION}"
MANIFEST_NAME = "manifest.json"
# Graph metadata key: the digest of the checkpoint a graph was exported from.
SOURCE_KEY = "qvl_compile.source_sha256"
KV_IN_PLACE, KV_GROWN = "in_place", "grown"
# Rows (batch x new tokens) from which the runtime runs an export's int8 prefill graph (export.prefill_int8): at 2B
# size one layer's projections in its form took 1.91x / 1.18x / 0.31x / 0.28x the 4-bit kernel's time (level 4, block
# 128) at 1 / 4 / 8 / 64 rows (docs/perf/decoder_kernels_prefill_int8_2b.md, Intel Xeon with AMX).
PREFILL_MIN_ROWS = 8


@dataclass(frozen=True)
class Target:
    """Where the graphs are meant to run: the dtype of their float inputs and outputs, and the provider."""

    io_dtype: str = "float32"
    execution_provider: str = "CPUExecutionProvider"


CPU_FP32 = Target()


@dataclass(frozen=True)
class FileRecord:
    path: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class TensorRecord:
    name: str
    dtype: str
    shape: tuple[int | str, ...]


def cache_names(num_layers: int) -> tuple[list[str], list[str], list[str], list[str]]:
    """(past keys, past values, present keys, present values): the decoder's cache input and output names."""
    past_k = [f"past_key_values.{i}.key" for i in range(num_layers)]
    past_v = [f"past_key_values.{i}.value" for i in range(num_layers)]
    present_k = [f"present.{i}.key" for i in range(num_layers)]
    present_v = [f"present.{i}.value" for i in range(num_layers)]
    return past_k, past_v, present_k, present_v


@dataclass(frozen=True)
class Artifact:
    """What every graph artifact records: its files (graph first), I/O, target and provenance."""

    files: tuple[FileRecord, ...]
    inputs: tuple[TensorRecord, ...]
    outputs: tuple[TensorRecord, ...]
    opset: int
    target: Target
    quant: dict[str, Any]
    export_check: dict[str, Any]
    stage_seconds: dict[str, float]
    source_sha256: str | None = None

    @property
    def graph(self) -> str:
        return self.files[0].path


@dataclass(frozen=True)
class VisionArtifact(Artifact):
    patch_dim: int = 0
    spatial_merge_size: int = 0
    out_hidden_size: int = 0
    num_deepstack: int = 0
    fused: dict[str, int] = field(default_factory=dict)
    export_grid: tuple[tuple[int, int, int], ...] = ()
    tolerance: float = 0.0


@dataclass(frozen=True)
class DecoderShape:
    """The sizes a caller of the decoder graph needs: cache layout, hidden and vocabulary sizes, DeepStack taps."""

    num_layers: int
    num_key_value_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    num_deepstack: int

    @property
    def cache_names(self) -> tuple[list[str], list[str], list[str], list[str]]:
        return cache_names(self.num_layers)


@dataclass(frozen=True)
class DecoderArtifact(Artifact):
    num_layers: int = 0
    num_key_value_heads: int = 0
    head_dim: int = 0
    hidden_size: int = 0
    vocab_size: int = 0
    num_deepstack: int = 0
    image_token_id: int = -1
    video_token_id: int = -1
    kv_cache: str = KV_IN_PLACE  # in_place: attention_mask input, past/present may share one buffer
    # The int8 prefill graph (export.prefill_int8), one of `files`: {"graph", "min_rows", ...}; empty: none.
    prefill: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> DecoderShape:
        return DecoderShape(**{f.name: getattr(self, f.name) for f in fields(DecoderShape)})

    @property
    def placeholder_ids(self) -> tuple[int, int]:
        return self.image_token_id, self.video_token_id


ARTIFACT_TYPES: dict[str, type[Artifact]] = {"vision": VisionArtifact, "decoder": DecoderArtifact}


@dataclass(frozen=True)
class Manifest:
    format: str
    family: str
    source: dict[str, Any]
    model: dict[str, Any]  # the checkpoint's config as the family parsed it (ModelConfig as a dict)
    versions: dict[str, str]
    options: dict[str, Any]
    artifacts: dict[str, Artifact]
    assets: tuple[FileRecord, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def max_context(self) -> int | None:
        return int(self.model.get("max_position_embeddings", 0)) or None


def _tuple_of(kind, values) -> tuple:
    return tuple(kind(**v) if isinstance(v, dict) else v for v in values)


def artifact_from_dict(name: str, raw: dict[str, Any], where: str = MANIFEST_NAME) -> Artifact:
    """The typed artifact of its manifest.json entry, or of export's fields (records may already be typed)."""
    kind = ARTIFACT_TYPES.get(name)
    if kind is None:
        raise QvlError(f"{where}: unknown artifact {name!r}; expected one of {', '.join(ARTIFACT_TYPES)}")
    known = {f.name for f in fields(kind)}
    values = {k: v for k, v in raw.items() if k in known}
    missing = sorted(f.name for f in fields(kind) if f.name not in raw and f.name in ("files", "inputs", "outputs"))
    if missing:
        raise QvlError(f"{where}: the {name} artifact lacks {', '.join(missing)}; re-export the folder")
    values["files"] = _tuple_of(FileRecord, raw["files"])
    values["inputs"] = tuple(TensorRecord(v["name"], v["dtype"], tuple(v["shape"])) for v in raw["inputs"])
    values["outputs"] = tuple(TensorRecord(v["name"], v["dtype"], tuple(v["shape"])) for v in raw["outputs"])
    target = raw.get("target", {})
    values["target"] = target if isinstance(target, Target) else Target(**target)
    if "export_grid" in values:
        values["export_grid"] = tuple(tuple(g) for g in values["export_grid"])
    return kind(**values)


def _migrate_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """qvl-compile/1 -> /2: the family was implicit (Qwen3-VL), the target CPU fp32, and the decoder's cache
    mode was probed from its inputs; now all three are recorded. The context length moves from model.text
    to model (beside model_type, as ModelConfig holds them)."""
    artifacts = {}
    for name, artifact in raw.get("artifacts", {}).items():
        artifact = dict(artifact, target=asdict(CPU_FP32))
        if name == "decoder":
            inputs = {value["name"] for value in artifact.get("inputs", [])}
            artifact["kv_cache"] = KV_IN_PLACE if "attention_mask" in inputs else KV_GROWN
        artifacts[name] = artifact
    model = dict(raw.get("model", {}), model_type="qwen3_vl")
    text = dict(model.get("text", {}))
    model.setdefault("max_position_embeddings", text.pop("max_position_embeddings", 0))
    model["text"] = text
    options = dict(raw.get("options", {}), target=asdict(CPU_FP32))
    return dict(raw, format=f"{FORMAT_PREFIX}2", family="qwen3_vl", model=model, options=options, artifacts=artifacts)


def _migrate_v2(raw: dict[str, Any]) -> dict[str, Any]:
    """qvl-compile/2 -> /3: a decoder may list an int8 prefill graph (`DecoderArtifact.prefill`); format 2 had none."""
    artifacts = {name: dict(artifact, prefill={}) if name == "decoder" else artifact
                 for name, artifact in raw.get("artifacts", {}).items()}
    return dict(raw, format=f"{FORMAT_PREFIX}3", artifacts=artifacts)


MIGRATIONS = {1: _migrate_v1, 2: _migrate_v2}  # version -> function to version + 1


def _version(raw: dict[str, Any], where: str) -> int:
    found = raw.get("format")
    if isinstance(found, str) and found.startswith(FORMAT_PREFIX) and found[len(FORMAT_PREFIX):].isdigit():
        return int(found[len(FORMAT_PREFIX):])
    raise QvlError(f"{where}: expected format {FORMAT!r}, got {found!r}")


def parse_manifest(raw: dict[str, Any], where: str = MANIFEST_NAME) -> Manifest:
    """The typed manifest of a parsed manifest.json, after migrating an older format."""
    version = _version(raw, where)
    if version > FORMAT_VERSION:
        raise QvlError(f"{where}: format {raw['format']!r} is newer than this qvl-compile reads ({FORMAT!r}); "
                       "upgrade qvl-compile")
    while version < FORMAT_VERSION:
        if version not in MIGRATIONS:
            raise QvlError(f"{where}: format {raw['format']!r} is too old to read; re-export with qvl-compile export")
        raw = MIGRATIONS[version](raw)
        version += 1
    try:
        artifacts = {name: artifact_from_dict(name, value, where) for name, value in raw.get("artifacts", {}).items()}
        return Manifest(format=FORMAT, family=raw["family"], source=raw["source"], model=raw["model"],
                        versions=raw.get("versions", {}), options=raw.get("options", {}), artifacts=artifacts,
                        assets=_tuple_of(FileRecord, raw.get("assets", [])))
    except KeyError as exc:
        raise QvlError(f"{where}: missing {exc.args[0]!r}; re-export the folder") from None
    except (TypeError, ValueError, AttributeError) as exc:  # a record without a field, or with an unknown one
        raise QvlError(f"{where}: not a readable manifest ({exc}); re-export the folder") from None
