"""The runtime with an export's int8 prefill graph (`--prefill int8`, export.prefill_int8), torch-free: calls of
PREFILL_MIN_ROWS rows or more run decoder_prefill.onnx, the rest decoder.onnx, on one cache; the trained tiny model
still answers. Reads QVL_GOLDEN_EXPORTS/int4-prefill
in the torch-free stage (tests/conftest.py: prefill_export)."""
import numpy as np
import pytest

from qvl_compile.contract import PREFILL_MIN_ROWS

pytestmark = pytest.mark.torch_free
PREFILL_FILE = "decoder_prefill.onnx"  # export.prefill_int8.PREFILL_FILE (that module needs torch)


def test_the_runtime_reads_prompts_with_the_prefill_graph(prefill_export):
    from qvl_compile.runtime.decoder import TextDecoder

    both = TextDecoder.from_export(prefill_export)
    assert both.prefill_session is not None
    alone = {name: TextDecoder(prefill_export / graph, both.facts) for name, graph in
             (("int4", "decoder.onnx"), ("int8", PREFILL_FILE))}
    rng = np.random.default_rng(5)
    for rows, graph in ((PREFILL_MIN_ROWS, "int8"), (PREFILL_MIN_ROWS - 1, "int4"), (1, "int4")):
        ids = rng.integers(10, 800, (1, rows))
        positions = np.broadcast_to(np.arange(rows), (3, 1, rows)).copy()
        got = both.forward(ids, positions, both.empty_cache(capacity=rows))[0]
        for name, decoder in alone.items():
            same = np.array_equal(got, decoder.forward(ids, positions, decoder.empty_cache(capacity=rows))[0])
            assert same == (name == graph), (rows, name)


def test_answers_stay_right_with_the_prefill_graph(prefill_export):
    """Colour and shape cases (seed 78): the trained model gets both right on 100% of the README's 600 cases."""
    from qvl_compile.runtime.pipeline import Pipeline
    from qvl_compile.tasks.shapes import make_case

    rng = np.random.default_rng(78)
    cases = [make_case(task, rng) for task in ("color", "shape") * 4]
    pipe = Pipeline(prefill_export, intra_op_threads=1)
    assert pipe.decoder.prefill_session is not None
    replies = [pipe.generate(case.prompt, images=list(case.images), max_new_tokens=8, greedy=True).text for case in cases]
    right = sum(reply.strip() == case.answer for reply, case in zip(replies, cases))
    assert right >= 7, list(zip(replies, [case.answer for case in cases]))


def test_a_prefill_graph_the_manifest_does_not_list_is_refused(prefill_export, tmp_path):
    import json
    import shutil

    from qvl_compile.errors import QvlError
    from qvl_compile.runtime.decoder import TextDecoder

    folder = tmp_path / "edited"
    shutil.copytree(prefill_export, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["artifacts"]["decoder"]["prefill"]["graph"] = "vision.onnx"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(QvlError, match="the decoder's prefill graph 'vision.onnx' is not one of its files"):
        TextDecoder.from_export(folder)
