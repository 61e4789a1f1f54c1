"""The streamed export (issue 14): weights read one tensor at a time, INT4 from onnxruntime's own block quantizer,
the quantized embedding table, checkpoints in every released layout, and the streamed PyTorch reference."""
import json
import logging
import weakref

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from qvl_compile.config import ModelConfig
from qvl_compile.export.checkpoint_files import CheckpointReader, TensorSpec, write_sharded
from qvl_compile.export.decoder_options import QuantOptions
from qvl_compile.export.decoder_verify import decoder_parity
from qvl_compile.export.graph_weights import GraphWeights, dequantize_gather
from qvl_compile.export.pipeline import export_model
from qvl_compile.export.skeleton import is_placeholder
from qvl_compile.export.streamed_reference import checkpoint_source, stream_parameters
from qvl_compile.parity import FP32_TOLERANCE
from qvl_compile.registry import family_named
from qvl_compile.runtime.decoder import TextDecoder

FAMILY = family_named("qwen3_vl")
EMBEDDING = "model.language_model.embed_tokens.weight"


def _initializers(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.fixture(scope="module")
def int4_in_small_chunks(tiny_dir, tmp_path_factory):
    """The INT4 decoder packed 1,000 float32 bytes at a time (every weight in many chunks, as large ones are)."""
    from qvl_compile.export import int4_weights

    previous, int4_weights.PACK_CHUNK_BYTES = int4_weights.PACK_CHUNK_BYTES, 1_000
    try:
        out = tmp_path_factory.mktemp("chunks") / "out"
        export_model(tiny_dir, out, component="decoder", quant=QuantOptions(accuracy_level=1))
    finally:
        int4_weights.PACK_CHUNK_BYTES = previous
    return out


@pytest.mark.parametrize("export_name", ["int4_export", "int4_in_small_chunks"])
def test_int4_weights_are_bit_identical_to_matmul_nbits_quantizer(fp32_export, export_name, request, tiny_dir):
    """Today's whole-graph quantizer over the float32 graph and our per-tensor calls give the same bytes."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    int4_export = request.getfixturevalue(export_name)

    options = QuantOptions(accuracy_level=1).for_family(FAMILY.auto_block_size(ModelConfig.from_dir(tiny_dir)))
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32_export / "decoder.onnx")), bits=4, block_size=options.block_size,
                                     is_symmetric=options.symmetric, accuracy_level=options.accuracy_level)
    quantizer.process()
    whole = {t.name: numpy_helper.to_array(t) for t in quantizer.model.model.graph.initializer
             if t.name.endswith(("_Q4", "_scales"))}
    streamed = _initializers(int4_export / "decoder.onnx")
    assert len(whole) == 2 * (4 * 7 + 1)  # 4 layers x 7 projections + the lm_head, packed bytes and scales
    for name, expected in whole.items():
        assert streamed[name].shape == expected.shape and streamed[name].dtype == expected.dtype, name
        assert streamed[name].tobytes() == expected.tobytes(), name


def test_tied_embedding_table_reads_the_lm_heads_packed_rows(int4_export, tiny_dir):
    graph = GraphWeights(int4_export / "decoder.onnx")
    (gather,) = graph.nodes("GatherBlockQuantized")
    assert gather.input[2] == "lm_head.weight_t_scales"  # shared scales
    table, head = graph.array(gather.input[0]), graph.array("lm_head.weight_t_Q4")
    assert table.tobytes() == head.tobytes() and table.shape == (head.shape[0], head.shape[1] * head.shape[2])
    vocab, hidden = CheckpointReader(tiny_dir).header[EMBEDDING][1]
    floats = [t for t in graph.proto.graph.initializer if list(t.dims) == [vocab, hidden]]
    assert not floats, "a float32 embedding table is still in the INT4 graph"
    _check_table_close(dequantize_gather(gather, graph), CheckpointReader(tiny_dir).read(EMBEDDING).numpy(),
                       graph.array(gather.input[2]), block=FAMILY.auto_block_size(ModelConfig.from_dir(tiny_dir)))


def _check_table_close(table: np.ndarray, original: np.ndarray, scales: np.ndarray, block: int) -> None:
    """Within half a quantization step per element (one step at the clipped end of a block)."""
    step = np.repeat(scales.reshape(original.shape[0], -1), block, axis=1)[:, : original.shape[1]]
    off = np.abs(table - original) / np.abs(step)
    assert table.shape == original.shape and off.max() <= 1.0 + 1e-5 and (off <= 0.5 + 1e-5).mean() > 0.97


@pytest.fixture(scope="module")
def untied_dir(tiny_dir, tmp_path_factory):
    """The tiny checkpoint with its own lm_head (as 8B has), in bf16, cut into shards with an index."""
    reader = CheckpointReader(tiny_dir)
    head = torch.randn(reader.header[EMBEDDING][1], generator=torch.Generator().manual_seed(3)) * 0.05
    tensors = {name: reader.read(name) for name in reader.header} | {"lm_head.weight": head}
    out = tmp_path_factory.mktemp("untied") / "model"
    out.mkdir()
    specs = [TensorSpec(name, tuple(t.shape), torch.bfloat16) for name, t in tensors.items()]
    files = write_sharded(out, specs, lambda spec: tensors[spec.name].to(torch.bfloat16), max_shard_bytes=400_000)
    assert len(files) > 2
    config = json.loads((tiny_dir / "config.json").read_text())
    config["tie_word_embeddings"] = config["text_config"]["tie_word_embeddings"] = False
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_untied_sharded_bf16_checkpoint_exports_with_its_own_table(untied_dir, tmp_path):
    """The export's own streamed verification passes; the table has its own packed 4-bit copy and scales beside the
    default level-4 export's 8-bit lm_head, and the manifest says so."""
    export_model(untied_dir, tmp_path / "out", component="decoder")
    graph = GraphWeights(tmp_path / "out" / "decoder.onnx")
    (gather,) = graph.nodes("GatherBlockQuantized")
    assert gather.input[0] == "embed_tokens_Q4" and gather.input[2] == "embed_tokens_scales"
    bits = {n.input[1]: next(a.i for a in n.attribute if a.name == "bits") for n in graph.nodes("MatMulNBits")}
    assert bits["lm_head.weight_t_Q4"] == 8 and next(a.i for a in gather.attribute if a.name == "bits") == 4
    quant = json.loads((tmp_path / "out" / "manifest.json").read_text())["artifacts"]["decoder"]["quant"]
    assert (quant["lm_head_bits"], quant["embedding_bits"]) == (8, 4)
    reader = CheckpointReader(untied_dir)
    _check_table_close(dequantize_gather(gather, graph), reader.read(EMBEDDING).numpy(), graph.array(gather.input[2]),
                       block=FAMILY.auto_block_size(ModelConfig.from_dir(untied_dir)))
    assert graph.array("lm_head.weight_t_Q4").tobytes() != graph.array("embed_tokens_Q4").tobytes()


def test_fp32_graph_from_shards_matches_transformers_in_memory(untied_dir, tmp_path):
    """transformers' own loader (whole model in memory) as the reference, not the streamed one."""
    from qvl_compile.families.qwen3_vl.loaders import load_full_model

    export_model(untied_dir, tmp_path / "out", component="decoder", quant=QuantOptions(mode="fp32"))
    parity = decoder_parity(TextDecoder.from_export(tmp_path / "out"), load_full_model(untied_dir), FAMILY, steps=4,
                            seed=8)
    assert parity.passed and parity.worst <= FP32_TOLERANCE


def test_writer_holds_one_weight_at_a_time(tiny_dir, tmp_path, monkeypatch):
    """While the graph's weights are written, each tensor read is released before the next one is read."""
    from qvl_compile.export import weight_writer

    alive, seen, writing = weakref.WeakSet(), [], []
    read, write = CheckpointReader.read_stored, weight_writer.write_graph

    def tracking_read(self, name, rows=None):
        tensor = read(self, name, rows)
        if writing:
            seen.append(len(alive))
            alive.add(tensor)
        return tensor

    def tracking_write(*args, **kwargs):
        writing.append(True)
        try:
            return write(*args, **kwargs)
        finally:
            writing.clear()
    monkeypatch.setattr(CheckpointReader, "read_stored", tracking_read)
    monkeypatch.setattr(weight_writer, "write_graph", tracking_write)
    export_model(tiny_dir, tmp_path / "out", component="decoder", quant=QuantOptions(mode="fp32"))
    assert len(seen) == 4 * 11 + 3 and max(seen) == 0  # 11 per layer, the table, the final norm, the lm_head


def test_streamed_reference_equals_the_loaded_model_and_lets_go(tiny_dir):
    from qvl_compile.families.qwen3_vl.loaders import load_vision_model

    skeleton = FAMILY.load_skeleton(tiny_dir)
    visual = skeleton.model.visual
    pixels = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (64, 1536)).astype(np.float32))
    grid = torch.tensor([[1, 8, 8]])
    with stream_parameters(visual, checkpoint_source(visual, CheckpointReader(tiny_dir), prefix="model.visual.")):
        streamed = FAMILY.reference_vision(visual, pixels, grid)
    loaded = FAMILY.reference_vision(load_vision_model(tiny_dir), pixels, grid)
    for got, expected in zip(streamed, loaded):
        assert torch.equal(got, expected)
    assert all(is_placeholder(p) for p in visual.parameters())  # nothing kept after the forward
    without = FAMILY.reference_vision(visual, pixels, grid)  # no weights streamed in: NaN, not a silent pass
    assert torch.isnan(without[0]).all()


@pytest.mark.parametrize("export_name", ["fp32_export", "int4_export"])
def test_reference_in_row_chunks_matches(export_name, request, tiny_dir, monkeypatch):
    """Forced to read every linear and embedding in row chunks (as the lm_head and the table are at real size),
    the streamed reference still matches the graph to the export check's tolerances."""
    from qvl_compile.export import streamed_reference
    from qvl_compile.export.decoder_verify import verify_decoder_graph
    from qvl_compile.manifest import read_manifest

    monkeypatch.setattr(streamed_reference, "CHUNKED_BYTES", 2_000)
    monkeypatch.setattr(streamed_reference, "CHUNK_BYTES", 3_000)
    export = request.getfixturevalue(export_name)
    artifact = read_manifest(export).artifacts["decoder"]
    skeleton = FAMILY.load_skeleton(tiny_dir)
    chunked = [m for m in skeleton.modules() if streamed_reference._is_chunked(m)]
    assert len(chunked) > 30 and any(isinstance(m, torch.nn.Embedding) for m in chunked)
    source = checkpoint_source(skeleton, CheckpointReader(tiny_dir))
    result = verify_decoder_graph(export / artifact.graph, skeleton, artifact.shape, FAMILY, artifact.quant["mode"],
                                  artifact.quant.get("accuracy_level", 1), steps=4, source=source)
    assert all(row["tokens_identical"] for row in result.values())
    assert not any("forward" in vars(m) for m in chunked)  # the class forward is back
