"""Committed golden data, read and checked without torch.

Layout of a golden folder (`golden/data/` in the repository, written only by `qvl-compile golden`):

    index.json                      generator versions, the tiny checkpoint's file hashes, the case list
    media/                          the images and the video the cases read
    cases/<kind>/<name>/case.json   inputs, outputs, tolerances with their reasons, parameters
    cases/<kind>/<name>/arrays.npz  the arrays case.json lists (each with its own sha256)

Large synthetic inputs are not stored: case.json gives the recipe (`pixels_from_seed`) and the sha256
of the array it yields, so a changed recipe is caught before any comparison.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qvl_compile.parity import max_abs, max_rel, pixels_from_seed

__all__ = ["Case", "EXACT", "GoldenMismatch", "Tolerance", "array_digest", "decoded_digest", "load_cases",
           "media_path", "pixels_from_seed", "read_index", "write_case"]

GOLDEN_FORMAT = "qvl-compile-golden/1"
DATA_DIR = Path(__file__).resolve().parent / "data"
INDEX_NAME = "index.json"


class GoldenMismatch(AssertionError):
    """An output differs from its golden beyond the recorded tolerance (the message names case and output)."""


def array_digest(array: np.ndarray) -> str:
    """sha256 over dtype, shape and the C-order bytes (container-independent)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{list(array.shape)}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Tolerance:
    metric: str  # "exact", "max_rel" (max |got - ref| / max |ref|) or "max_abs"
    value: float
    reason: str

    def error(self, got: np.ndarray, ref: np.ndarray) -> float:
        if got.shape != ref.shape:
            return float("inf")
        if self.metric == "exact":
            return 0.0 if np.array_equal(got, ref) else float("inf")
        return max_abs(got, ref) if self.metric == "max_abs" else max_rel(got, ref)

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "reason": self.reason}


EXACT = Tolerance("exact", 0.0, "integers: any difference is a bug")


@dataclass(frozen=True)
class Case:
    name: str  # "<kind>/<slug>"
    folder: Path
    record: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.record["kind"]

    @property
    def params(self) -> dict[str, Any]:
        return self.record.get("params", {})

    def _arrays(self) -> dict[str, np.ndarray]:
        with np.load(self.folder / "arrays.npz", allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def input(self, name: str) -> np.ndarray:
        spec = self.record["inputs"][name]
        if "recipe" in spec:
            recipe = spec["recipe"]
            array = pixels_from_seed(recipe["rows"], recipe["patch_dim"], recipe["seed"])
            if array_digest(array) != spec["sha256"]:
                raise GoldenMismatch(f"golden case {self.name!r}, input {name!r}: the recipe {recipe} no longer "
                                     "yields the array the golden was computed from (numpy changed its stream?)")
            return array
        return self._arrays()[f"input.{name}"]

    def output(self, name: str) -> np.ndarray:
        return self._arrays()[f"output.{name}"]

    def tolerance(self, name: str) -> Tolerance:
        spec = self.record["outputs"][name]["tolerance"]
        return Tolerance(spec["metric"], spec["value"], spec["reason"])

    def check(self, name: str, got) -> float:
        """Compare `got` with output `name`; raise GoldenMismatch naming the case and the output."""
        ref, tol = self.output(name), self.tolerance(name)
        got = np.asarray(got)
        if got.shape != ref.shape:
            raise GoldenMismatch(f"golden case {self.name!r}, output {name!r}: shape {list(got.shape)}, "
                                 f"golden {list(ref.shape)}")
        error = tol.error(got, ref)
        if not error <= tol.value:
            detail = "differs" if tol.metric == "exact" else f"{tol.metric} {error:.3g} exceeds {tol.value:g}"
            raise GoldenMismatch(f"golden case {self.name!r}, output {name!r}: {detail} ({tol.reason})")
        return error

    def check_integrity(self) -> None:
        """Every stored array matches the sha256 case.json records for it (catches hand edits)."""
        arrays = self._arrays()
        for role in ("inputs", "outputs"):
            for name, spec in self.record[role].items():
                if "recipe" in spec:
                    continue
                key = f"{role[:-1]}.{name}"
                if key not in arrays:
                    raise GoldenMismatch(f"golden case {self.name!r}: {key} listed in case.json, missing in arrays.npz")
                if array_digest(arrays[key]) != spec["sha256"]:
                    raise GoldenMismatch(f"golden case {self.name!r}, {role[:-1]} {name!r}: arrays.npz differs from "
                                         "the sha256 in case.json (edited by hand? regenerate with qvl-compile golden)")


def read_index(root: str | Path = DATA_DIR) -> dict[str, Any]:
    path = Path(root) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no golden index (write one with: qvl-compile golden {root})")
    index = json.loads(path.read_text())
    if index.get("format") != GOLDEN_FORMAT:
        raise ValueError(f"{path}: expected format {GOLDEN_FORMAT!r}, got {index.get('format')!r}")
    return index


def load_cases(kind: str | None = None, root: str | Path = DATA_DIR) -> list[Case]:
    root = Path(root)
    cases = []
    for name in read_index(root)["cases"]:
        folder = root / "cases" / name
        record = json.loads((folder / "case.json").read_text())
        if kind is None or record["kind"] == kind:
            cases.append(Case(name, folder, record))
    return cases


def decoded_digest(path: Path) -> str:
    """sha256 of what a medium decodes to (encoders may change bytes, never the decoded pixels)."""
    if path.suffix == ".mkv":
        import av

        with av.open(str(path)) as container:
            return array_digest(np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]))
    from PIL import Image

    with Image.open(path) as image:
        return array_digest(np.asarray(image))


def media_path(name: str, root: str | Path = DATA_DIR) -> Path:
    return Path(root) / "media" / name


def _array_spec(array: np.ndarray) -> dict[str, Any]:
    return {"shape": list(array.shape), "dtype": array.dtype.name, "sha256": array_digest(array)}


def write_case(root: Path, name: str, kind: str, *, inputs: dict[str, Any], outputs: dict[str, tuple[np.ndarray, Tolerance]],
               params: dict[str, Any] | None = None, notes: str = "") -> None:
    """inputs: name -> array, or ("recipe", array, recipe dict) for an unstored synthetic array."""
    folder = root / "cases" / name
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    record: dict[str, Any] = {"format": GOLDEN_FORMAT, "name": name, "kind": kind, "notes": notes,
                              "params": params or {}, "inputs": {}, "outputs": {}}
    for key, value in inputs.items():
        if isinstance(value, tuple) and value[0] == "recipe":
            _, array, recipe = value
            record["inputs"][key] = {**_array_spec(array), "recipe": recipe, "stored": False}
        else:
            array = np.asarray(value)
            arrays[f"input.{key}"] = array
            record["inputs"][key] = {**_array_spec(array), "stored": True}
    for key, (array, tol) in outputs.items():
        array = np.asarray(array)
        arrays[f"output.{key}"] = array
        record["outputs"][key] = {**_array_spec(array), "tolerance": tol.as_dict()}
    np.savez_compressed(folder / "arrays.npz", **arrays)
    (folder / "case.json").write_text(json.dumps(record, indent=1) + "\n")
