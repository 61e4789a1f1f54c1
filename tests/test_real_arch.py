"""Slow tier: real Qwen3-VL architectures with random weights (pytest -m slow)."""
import pytest

from qvl_compile.export.grids import GRID_MATRIX

pytestmark = pytest.mark.slow


def test_2b_vision_exports_and_matches_eager(tmp_path):
    from qvl_compile.export.pipeline import export_model
    from qvl_compile.export.verify import verify_export
    from qvl_compile.families.qwen3_vl.fixtures import arch_dir, write_random

    model = write_random(arch_dir("2b"), tmp_path / "model", seed=0, vision_only=True)
    out = tmp_path / "out"
    export_model(model, out, component="vision")
    assert (out / "vision.onnx.data").is_file()  # 1.6 GB of weights go beside the graph
    grids = {k: GRID_MATRIX[k] for k in ("smallest (2x2 patches)", "larger than table 56x52", "image + video")}
    rows = verify_export(out, model, grids)
    assert all(r.passed for r in rows), [(r.name, r.output, r.max_rel) for r in rows if not r.passed]


def test_2b_int4_decoder_matches_its_fake_quant_reference(tmp_path):
    """Export about 3 minutes on 2 cores, peak RSS about 2.6 GB (weights streamed). The packed weights are the
    bytes onnxruntime's MatMulNBitsQuantizer gives the same float32 MatMul (first and last layer; the lm_head at 8
    bits, the default at accuracy level 4)."""
    import json

    from qvl_compile.export.pipeline import export_model
    from qvl_compile.families.qwen3_vl.fixtures import arch_dir, write_random

    model = write_random(arch_dir("2b"), tmp_path / "model", seed=0)
    out = tmp_path / "out"
    export_model(model, out, component="decoder")  # raises on a parity failure
    check = json.loads((out / "manifest.json").read_text())["artifacts"]["decoder"]["export_check"]
    # The default accuracy level 4: the weights exact on a level-0 copy, the shipped graph within its own bound
    # (measured 1.1e-2 of 5e-2, tokens identical, on the 28-layer 2B; AVX2 EPYC).
    assert check["accuracy_level_0_vs_fake_quant"]["tokens_identical"]
    assert check["accuracy_level_4_vs_fake_quant"]["decode_max_rel"] <= check["accuracy_level_4_vs_fake_quant"]["tolerance"]
    layers = json.loads((model / "config.json").read_text())["text_config"]["num_hidden_layers"]
    names = [f"layers.{i}.{p}.weight_t" for i in (0, layers - 1) for p in PROJECTIONS] + ["lm_head.weight_t"]
    _check_against_whole_graph_quantizer(model, out / "decoder.onnx", names)


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _check_against_whole_graph_quantizer(model_dir, graph_path, names):
    """Each named weight as a one-MatMul float32 graph through MatMulNBitsQuantizer: same bytes and scales."""
    import logging

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from qvl_compile.config import ModelConfig
    from qvl_compile.export.checkpoint_files import CheckpointReader
    from qvl_compile.export.graph_weights import GraphWeights
    from qvl_compile.families.qwen3_vl.loaders import projection_module
    from qvl_compile.registry import family_named

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    reader, graph = CheckpointReader(model_dir), GraphWeights(graph_path)
    family = family_named("qwen3_vl")
    block = family.auto_block_size(ModelConfig.from_dir(model_dir))  # the block size the default export used
    skeleton = family.load_skeleton(model_dir)
    module_names = {id(m): n for n, m in skeleton.named_modules()}
    for name in names:
        key = module_names[id(projection_module(skeleton, name))] + ".weight"
        key = key if key in reader else "model.language_model.embed_tokens.weight"  # a tied lm_head
        weight = np.ascontiguousarray(reader.read(key).numpy().T)  # [in, out], as the graph's MatMul holds it
        node = helper.make_node("MatMul", ["x", name], ["y"], name="m")
        g = helper.make_graph([node], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, name)])
        bits = 8 if name.startswith("lm_head") else 4  # level 4's default keeps the output projection at 8 bits
        quantizer = MatMulNBitsQuantizer(helper.make_model(g), bits=bits, block_size=block,
                                         is_symmetric=True, accuracy_level=1)
        quantizer.process()
        whole = {t.name: numpy_helper.to_array(t) for t in quantizer.model.model.graph.initializer}
        del weight, g, quantizer
        for suffix, theirs in (("_Q4", f"_Q{bits}"), ("_scales", "_scales")):  # our 8-bit rows keep the _Q4 name
            got, expected = graph.array(name + suffix), whole[name + theirs]
            assert got.shape == expected.shape and got.tobytes() == expected.tobytes(), name + suffix


PEAK_OF_CHILD = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def test_4b_export_stays_within_6_gb(tmp_path):
    """`qvl-compile export` (all components, INT4, verified) of the 4B architecture, as a user runs it: its
    peak RSS (ru_maxrss, measured by a fresh parent that runs only the export) stays within 6 GB."""
    import subprocess
    import sys

    model, out = tmp_path / "model", tmp_path / "out"
    cli = [sys.executable, "-m", "qvl_compile.cli", "-q"]
    subprocess.run([*cli, "random", "4b", model], check=True)  # peak about 1.2 GB
    measured = subprocess.run([sys.executable, "-c", PEAK_OF_CHILD, *cli, "export", model, out], check=True,
                              capture_output=True, text=True)
    peak = int(measured.stdout.split()[-1]) * 1024  # kilobytes on Linux
    assert peak <= 6e9, f"peak RSS {peak / 1e9:.2f} GB"
    assert (out / "decoder.onnx.data").stat().st_size < 2.6e9
