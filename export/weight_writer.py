"""Write a captured graph's weights from the checkpoint, one tensor at a time.

The graph comes from a skeleton (`export.skeleton`): its parameter initializers hold placeholders. They
are taken out of the graph, which leaves a small proto; then each weight is read from the checkpoint,
converted (float32, transposed where the graph stores a linear as [in, out]), optionally packed to INT4
(`export.int4_weights`), and its bytes appended to the external-data file before the next is read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from qvl_compile.errors import QvlError
from qvl_compile.export.checkpoint_files import CheckpointReader

ALIGNMENT = 4096  # external tensors start on a page boundary, so onnxruntime can map them


@dataclass(frozen=True)
class WeightSource:
    """Where a graph initializer's values come from: a checkpoint tensor, possibly transposed."""

    key: str  # the checkpoint's tensor name
    shape: tuple[int, ...]  # the initializer's shape
    transpose: bool = False  # the initializer is the 2-D tensor's transpose ([in, out] of an [out, in] linear)
    swap_last: bool = False  # 3-D experts: the checkpoint stores [E, in, out], the initializer is [E, out, in]
    interleave: bool = False  # 3-D fused gate/up experts: gate row j goes to row 2j, up row j to 2j+1 (rewrite.moe)

    def stored_shape(self) -> tuple[int, ...]:
        if self.swap_last:
            return (self.shape[0], self.shape[2], self.shape[1])
        return tuple(reversed(self.shape)) if self.transpose else self.shape

    def read(self, reader: CheckpointReader, rows: tuple[int, int] | None = None) -> np.ndarray:
        """float32 in C order (what the graph and the quantizer take); transposed while converting, so memory
        holds the stored tensor and one float32 copy. `rows`: only rows [start, stop) of axis 0 (3-D experts)."""
        import torch

        from qvl_compile.rewrite.moe import interleave_gate_up

        stored = reader.read_stored(self.key, rows)
        stored = stored.transpose(1, 2) if self.swap_last else stored.T if self.transpose else stored
        if self.interleave:
            stored = interleave_gate_up(stored)
        values = torch.empty(stored.shape, dtype=torch.float32)
        values.copy_(stored)
        return values.numpy()


class TensorWriter:
    """Initializers for one graph: external tensors appended to `data_path`, or inline when it is None."""

    def __init__(self, data_path: Path | None):
        self.data_path = data_path
        self._file = open(data_path, "wb") if data_path else None
        self.offsets: dict[str, tuple[int, int]] = {}  # name -> (offset, length) in the data file

    def add(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        if self._file is None:
            return numpy_helper.from_array(array, name)
        offset = -self._file.tell() % ALIGNMENT + self._file.tell()
        self._file.seek(offset)
        self._file.write(memoryview(np.ascontiguousarray(array)).cast("B"))
        self.offsets[name] = (offset, array.nbytes)
        return self.external(name, array.dtype, array.shape, name)

    def external(self, name: str, dtype: np.dtype, shape: tuple[int, ...], bytes_of: str) -> onnx.TensorProto:
        """A tensor over the bytes already written for `bytes_of` (the same bytes, any shape of that size)."""
        offset, length = self.offsets[bytes_of]
        tensor = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                  dims=list(shape), data_location=onnx.TensorProto.EXTERNAL)
        for key, value in (("location", self.data_path.name), ("offset", str(offset)), ("length", str(length))):
            tensor.external_data.add(key=key, value=value)
        return tensor

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def weight_sources(module, names_by_storage: dict[int, list[str]], reader: CheckpointReader) -> dict[str, WeightSource]:
    """Where each parameter of the captured `module` comes from, checked against the checkpoint's headers.

    `names_by_storage` (`skeleton.parameter_names` of the loaded model, taken before the rewrite) names the
    transformers parameter behind each placeholder; a rewritten parameter named `*.weight_t` is its transpose.
    """
    from qvl_compile.export.skeleton import storage_key
    from qvl_compile.rewrite.moe import FC1

    sources: dict[str, WeightSource] = {}
    for name, param in module.named_parameters():
        names = names_by_storage.get(storage_key(param))
        if names is None:
            raise QvlError(f"parameter {name} of the captured module is not one of the checkpoint's weights")
        stored = [n for n in names if n in reader]
        if not stored:
            raise QvlError(f"{reader.model_dir}: the checkpoint has no tensor {names[0]} "
                           f"(expected shape {list(param.shape)})")
        shape = tuple(param.shape)
        source = WeightSource(stored[0], shape, transpose=name.endswith(".weight_t"),
                              swap_last=reader.stores_swapped(stored[0], shape), interleave=name.endswith("." + FC1))
        reader.check_shape(source.key, source.stored_shape())
        sources[name] = source
    return sources


def take_out_weights(ir_model, names: set[str]) -> onnx.ModelProto:
    """The translated graph as a proto without the named initializers (their placeholders are dropped)."""
    import onnx_ir as ir

    initializers = ir_model.graph.initializers
    missing = sorted(names - set(initializers))
    if missing:
        raise QvlError(f"the captured graph has no initializer for parameter(s) {missing[:5]}")
    for name in names:
        initializers.pop(name)
    return ir.serde.serialize_model(ir_model)


def check_no_placeholder_constants(proto: onnx.ModelProto) -> None:
    """A constant folded from a placeholder weight is all NaN: refuse it rather than write a wrong graph."""
    for tensor in proto.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind == "f" and array.size > 1 and np.isnan(array).all():
            raise QvlError(f"initializer {tensor.name} {list(array.shape)} was folded from a weight during capture; "
                           "the streaming exporter cannot fill it from the checkpoint")


class Float32Weights:
    """The plain plan: every weight written as it is read."""

    def write(self, name: str, source: WeightSource, reader: CheckpointReader,
              writer: TensorWriter) -> list[onnx.TensorProto]:
        return [writer.add(name, source.read(reader))]

    def finish(self, writer: TensorWriter, written: dict[str, onnx.TensorProto]) -> list[onnx.TensorProto]:
        return []


def write_graph(proto: onnx.ModelProto, sources: dict[str, WeightSource], reader: CheckpointReader, path: Path,
                external: bool, plan=None) -> None:
    """Save `proto` at `path` with its weights read from `reader` one by one (`plan` reads and packs each one;
    default: float32 as read). External data goes to `path.name + ".data"` beside it."""
    plan = plan or Float32Weights()
    writer = TensorWriter(path.with_name(path.name + ".data") if external else None)
    written: dict[str, onnx.TensorProto] = {}
    try:
        for name, source in sources.items():
            for tensor in plan.write(name, source, reader, writer):
                written[tensor.name] = tensor
        written.update({t.name: t for t in plan.finish(writer, written)})
    finally:
        writer.close()
    proto.graph.initializer.extend(written.values())
    onnx.save_model(proto, str(path))
