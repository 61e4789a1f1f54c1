"""INT4 weights written tensor by tensor: `MatMulNBits` projections and a `GatherBlockQuantized` embedding.

Each projection weight goes through onnxruntime's own block quantizer (`DefaultWeightOnlyQuantizer`, the
per-tensor step of `MatMulNBitsQuantizer`), one tensor at a time, and gets the names, shapes and node
that `MatMulNBitsQuantizer` gives it (an 8-bit lm_head keeps the `_Q4` names, which that quantizer spells
`_Q8`). The embedding table becomes `GatherBlockQuantized` over 4-bit rows (zero point 8, as MatMulNBits'
symmetric weights): where the checkpoint ties it to the lm_head, it reads the lm_head's packed bytes in place
(a second view of the same external data, [vocab, hidden * bits / 8]), so the table costs no bytes on disk;
where it is untied it gets its own 4-bit copy. With `lm_head_bits` 8 the lm_head (and a table that shares its
bytes) keeps 8 bits per weight ([N, K/block, block] bytes, zero point 128).
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
import torch

from qvl_compile.errors import QvlError
from qvl_compile.export.checkpoint_files import CheckpointReader
from qvl_compile.export.decoder_options import QuantOptions
from qvl_compile.export.moe_weights import expert_weights, pack_experts, qmoe_node
from qvl_compile.export.weight_writer import TensorWriter, WeightSource

log = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"
PACK_CHUNK_BYTES = 64 << 20  # float32 bytes of a weight converted at once while packing


def block_quantizer(options: QuantOptions, bits: int = 4):
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer

    return DefaultWeightOnlyQuantizer(DefaultWeightOnlyQuantConfig(
        block_size=options.block_size, is_symmetric=options.symmetric, accuracy_level=options.accuracy_level, bits=bits))


class Int4Plan:
    """Which initializers become MatMulNBits weights (and which Gather the quantized embedding), decided on the
    weightless graph before any weight is read; `write` then packs each weight as it streams past."""

    def __init__(self, proto: onnx.ModelProto, sources: dict[str, WeightSource], options: QuantOptions,
                 lm_head: str, embedding: str, head_bits: int, keep_float32: tuple[str, ...] = ()):
        """`head_bits`: the lm_head's bits, resolved (QuantOptions.head_bits_for); `keep_float32`: name suffixes of
        MatMul weights left float32 (a family's `float32_weights`)."""
        self.options, self.sources, self.head_bits = options, sources, head_bits
        self.quantizer = block_quantizer(options)
        # The output projection may keep 8 bits (--lm-head-bits): it sets every logit, grounding's digits included
        self.lm_head_quantizer = block_quantizer(options, head_bits)
        self.lm_head, self.embedding = lm_head, embedding
        self.matmuls = {n.input[1] for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in sources
                        and len(sources[n.input[1]].shape) == 2 and not any(n.input[1].endswith(k) for k in keep_float32)
                        and (options.quantize_lm_head or n.input[1] != lm_head)}
        self.experts = expert_weights(proto)  # MoE fc1/fc2: packed per expert for QMoE
        # The table shares the lm_head's packed rows when both are one checkpoint tensor and the lm_head is packed.
        self.shared = lm_head in self.matmuls and embedding in sources and sources[embedding].key == sources[lm_head].key
        self.quantize_embedding = options.quantize_embedding and options.symmetric and embedding in sources
        if not options.symmetric:
            log.info("asymmetric INT4: the embedding table stays float32 (GatherBlockQuantized here is symmetric only)")
        self._rewrite_nodes(proto)

    @property
    def lm_head_bits(self) -> int | None:
        """Bits of the lm_head's MatMulNBits (None: it stays float32)."""
        return self.head_bits if self.lm_head in self.matmuls else None

    @property
    def embedding_bits(self) -> int | None:
        """Bits of the GatherBlockQuantized table (None: it stays float32): the lm_head's where it shares its bytes."""
        if not self.quantize_embedding:
            return None
        return self.head_bits if self.shared else 4

    def _rewrite_nodes(self, proto: onnx.ModelProto) -> None:
        nodes = []
        for node in proto.graph.node:
            if node.op_type == "MatMul" and node.input[1] in self.matmuls:
                node = self._matmul_nbits(node)
            elif node.op_type == "MoE":
                node = qmoe_node(node, self.options)
            elif self.quantize_embedding and node.op_type == "Gather" and node.input[0] == self.embedding:
                node = self._gather_block_quantized(node)
            nodes.append(node)
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        if not any(o.domain == MS_DOMAIN for o in proto.opset_import):
            proto.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))

    def _matmul_nbits(self, node: onnx.NodeProto) -> onnx.NodeProto:
        """The node `MatMulNBitsQuantizer` makes: same name, inputs and attributes."""
        weight = node.input[1]
        k, n = self.sources[weight].shape
        inputs = [node.input[0], weight + "_Q4", weight + "_scales"]
        if not self.options.symmetric:
            inputs.append(weight + "_zero_points")
        level = {"accuracy_level": self.options.accuracy_level} if self.options.accuracy_level else {}
        return onnx.helper.make_node("MatMulNBits", inputs, list(node.output), name=node.name + "_Q4" if node.name else "",
                                     domain=MS_DOMAIN, K=k, N=n, bits=self._bits(weight),
                                     block_size=self.options.block_size, **level)

    def _bits(self, weight: str) -> int:
        return self.head_bits if weight == self.lm_head else 4

    def _quantizer_for(self, weight: str):
        return self.lm_head_quantizer if weight == self.lm_head else self.quantizer

    def _gather_block_quantized(self, node: onnx.NodeProto) -> onnx.NodeProto:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if axis != 0:
            raise QvlError(f"the embedding Gather {node.name} gathers along axis {axis}, expected 0")
        scales = (self.lm_head if self.shared else self.embedding) + "_scales"
        return onnx.helper.make_node(
            "GatherBlockQuantized", [self.embedding + "_Q4", node.input[1], scales], list(node.output),
            name=node.name + "_Q4", domain=MS_DOMAIN, gather_axis=0, quantize_axis=1,
            block_size=self.options.block_size, bits=self._bits(self.lm_head) if self.shared else 4)

    def pack(self, source: WeightSource, reader: CheckpointReader,
             quantizer=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(packed [N, K/block, block * bits / 8] uint8, scales [N, K/block], zero points) of a weight whose
        checkpoint tensor is [N, K] (a linear, which the graph holds as its [K, N] transpose, or the table
        [vocab, hidden]), by `quantizer` (default: the 4-bit one).

        The quantizer packs each of the N columns of a [K, N] weight on its own, so the weight is read and packed
        PACK_CHUNK_BYTES of float32 at a time: the same bytes as one call, without the whole float32 matrix.
        """
        n, k = reader.stored[source.key].shape
        step = max(1, PACK_CHUNK_BYTES // (k * 4))
        parts = []
        for start in range(0, n, step):
            rows = reader.read_stored(source.key, (start, min(start + step, n)))  # [c, K] as stored
            chunk = torch.empty((k, rows.shape[0]), dtype=torch.float32)
            chunk.copy_(rows.T)  # [K, c], C order: the quantizer's input
            parts.append((quantizer or self.quantizer).qbits_block_quant(chunk.numpy()))
            del rows, chunk
        return tuple(np.concatenate([part[i] for part in parts]) if len(parts) > 1 else parts[0][i] for i in range(3))

    def write(self, name: str, source: WeightSource, reader: CheckpointReader,
              writer: TensorWriter) -> list[onnx.TensorProto]:
        """The initializers for one graph weight, read from the checkpoint here."""
        if name in self.experts:
            packed, scales = pack_experts(source, reader, self.quantizer)
            return [writer.add(name + "_Q4", packed), writer.add(name + "_scales", scales)]
        if name in self.matmuls:
            if not source.transpose:
                raise QvlError(f"{name}: expected the [in, out] transpose of a checkpoint linear")
            packed, scales, zero_points = self.pack(source, reader, self._quantizer_for(name))
            written = [writer.add(name + "_Q4", packed), writer.add(name + "_scales", scales)]
            if not self.options.symmetric:
                written.append(writer.add(name + "_zero_points", zero_points))
            return written
        if name == self.embedding and self.quantize_embedding:
            if self.shared:
                return []  # written from the lm_head's bytes in finish()
            packed, scales, _ = self.pack(source, reader)  # the table [vocab, H] packed as a [H, vocab] weight
            return [writer.add(name + "_Q4", packed.reshape(packed.shape[0], -1)), writer.add(name + "_scales", scales)]
        return [writer.add(name, source.read(reader))]

    def finish(self, writer: TensorWriter, written: dict[str, onnx.TensorProto]) -> list[onnx.TensorProto]:
        """The shared table: the lm_head's packed bytes seen as [vocab, hidden * bits / 8]."""
        if not (self.shared and self.quantize_embedding):
            return []
        packed = written[self.lm_head + "_Q4"]
        vocab = packed.dims[0]
        shape = (vocab, int(np.prod(packed.dims[1:])))
        if writer.data_path is None:  # inline (small graphs): a copy of the bytes
            array = onnx.numpy_helper.to_array(packed).reshape(shape)
            return [onnx.numpy_helper.from_array(array, self.embedding + "_Q4")]
        return [writer.external(self.embedding + "_Q4", np.uint8, shape, bytes_of=self.lm_head + "_Q4")]


def count_ops(model: onnx.ModelProto | onnx.GraphProto) -> dict[str, int]:
    """Nodes per op type in the top-level graph."""
    graph = model.graph if isinstance(model, onnx.ModelProto) else model
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
