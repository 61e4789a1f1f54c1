"""The committed goldens are reproducible: the generator, rerun here, gives back golden/data.

Also: `qvl-compile tiny` still writes the checkpoint the goldens were made from (the trained one), and the
exported graphs still match their committed text summaries (golden/data/graphs/). A change to the
exporter's output or a hand-edited golden fails here with the case and output named.
"""
import difflib
from pathlib import Path

import numpy as np
import pytest

from qvl_compile.golden.store import DATA_DIR, GoldenMismatch, load_cases, read_index
from qvl_compile.manifest import sha256_file

INPUT_TOLERANCE = 1e-5  # max rel; float inputs come from transformers' vision tower (fp32, ~1e-7 between lines)


def test_tiny_checkpoint_regenerates_bit_exactly(tiny_dir):
    recorded = read_index()["tiny_checkpoint"]
    assert recorded["model"] == "trained"
    fresh = {p.name: sha256_file(p) for p in sorted(tiny_dir.iterdir()) if p.is_file()}
    assert fresh == recorded["files"], "qvl-compile tiny no longer writes the checkpoint the goldens were made from"


def test_exported_graphs_match_their_committed_summaries(fp32_export, int4_export):
    from qvl_compile.export.graph_summary import summarize
    from qvl_compile.golden.generate import GRAPHS

    exports = {"fp32_export": fp32_export, "int4_export": int4_export}
    changed = []
    for name, (export, graph) in GRAPHS.items():
        committed = (DATA_DIR / "graphs" / name).read_text()
        fresh = summarize(exports[export] / graph)
        if fresh != committed:
            diff = difflib.unified_diff(committed.splitlines(), fresh.splitlines(), f"golden/data/graphs/{name}",
                                        "fresh export", lineterm="")
            changed.append("\n".join(diff))
    assert not changed, ("the exported graphs changed; review, then regenerate with `qvl-compile golden golden/data`:\n"
                         + "\n".join(changed))


def _close_float_input(case, new, name: str) -> bool:
    """Float inputs that PyTorch computed (the decoder's visual features) may move by summation order
    between transformers lines; integer and seeded inputs must be identical."""
    if case.record["inputs"][name]["dtype"] != "float32" or not case.record["inputs"][name]["stored"]:
        return False
    ref, got = case.input(name), new.input(name)
    return ref.shape == got.shape and float(np.abs(got - ref).max()) <= INPUT_TOLERANCE * float(np.abs(ref).max())


@pytest.fixture(scope="module")
def regenerated(tiny_dir, fp32_export, int4_export, tmp_path_factory):
    from qvl_compile.golden.generate import Sources, generate_goldens

    out = tmp_path_factory.mktemp("golden") / "data"
    index = generate_goldens(out, sources=Sources(tiny_dir, fp32_export, int4_export))
    return out, index


def test_regenerated_goldens_match_the_committed_ones(regenerated):
    out, index = regenerated
    failures = golden_differences(DATA_DIR, out, index)
    assert not failures, "regenerated goldens differ (regenerate with `qvl-compile golden golden/data`):\n" + \
        "\n".join(failures)


def golden_differences(committed: Path, out: Path, index: dict) -> list[str]:
    """What a regenerated golden folder `out` (with its index) changes against the committed folder."""
    fresh = {c.name: c for c in load_cases(root=out)}
    skipped = set(index["generator"]["skipped"])
    failures = []
    for case in load_cases(root=committed):
        if case.kind in skipped:
            continue
        new = fresh.get(case.name)
        if new is None:
            failures.append(f"golden case {case.name!r}: the generator no longer writes it")
            continue
        for name, spec in case.record["inputs"].items():
            if spec["sha256"] != new.record["inputs"].get(name, {}).get("sha256") and not _close_float_input(
                    case, new, name):
                failures.append(f"golden case {case.name!r}, input {name!r}: the generator now feeds another input")
        if case.params != new.params:
            failures.append(f"golden case {case.name!r}: parameters differ: {case.params} vs {new.params}")
        for name in case.record["outputs"]:
            try:
                case.check(name, new.output(name))
            except GoldenMismatch as exc:
                failures.append(str(exc))
    extra = sorted(set(fresh) - {c.name for c in load_cases(root=committed)})
    if extra:
        failures.append(f"the generator writes cases {committed.name} lacks: {extra}")
    committed_media = read_index(committed)["media"]
    for name, record in index["media"].items():
        if committed_media.get(name) != record:
            failures.append(f"golden media {name}: regenerated as {record}, committed {committed_media.get(name)}")
    return failures
