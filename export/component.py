"""One exporter for every component: a `ComponentSpec` says what differs, `export_component` runs the stages.

    load checkpoint -> rewrite -> capture (torch.export) -> translate to ONNX -> the spec's steps

The steps after translation are the spec's own list of named stages: post-passes (GELU fusion, INT4,
int8, later fp16), the checker, and verification against PyTorch. A streamed spec (weights written
from the checkpoint after translation) may rewrite its weightless graph first (`GraphPass`: RMSNorm fusion).
Each stage logs what it did and fails with its name (`export.stages`). The vision tower and the text decoder are two specs
(`export.vision`, `export.decoder`); a decoder whose MLP is a mixture of experts is another spec built
from its family's rewrite factory, with the same stages.

Weights: `load` returns the transformers model and `rewrite` the module to capture; the exporter drops
both after translation unless the spec keeps the reference for verification, so a later streaming
`load` (weights read from the checkpoint one tensor at a time) replaces one function, not the skeleton.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from qvl_compile.config import ModelConfig
from qvl_compile.contract import Target
from qvl_compile.export.graph_names import name_dims
from qvl_compile.export.onnx_functions import OPSET
from qvl_compile.export.stages import Stages, release_memory
from qvl_compile.manifest import file_record
from qvl_compile.registry import Family

log = logging.getLogger(__name__)

# Above this many weight bytes a graph keeps its weights in an external file (protobuf caps at 2 GiB).
EXTERNAL_DATA_BYTES = 1 << 30


@dataclass
class ExportContext:
    """What the stages of one component share: inputs, the graph being written, and what they recorded."""

    family: Family
    config: ModelConfig
    model_dir: Path
    work_dir: Path
    target: Target
    path: Path = Path()  # the component's graph in work_dir, set by export_component
    weight_bytes: int = 0
    reference: Any = None  # the transformers model, while the spec keeps it for verification
    reader: Any = None  # the checkpoint's tensors (export.checkpoint_files.CheckpointReader), streamed specs
    record: dict[str, Any] = field(default_factory=dict)  # artifact fields the steps measured

    @property
    def external(self) -> bool:
        return self.weight_bytes > EXTERNAL_DATA_BYTES


@dataclass(frozen=True)
class Step:
    """A named stage after translation (a post-pass, a check or a verification)."""

    name: str
    run: Callable[[ExportContext], None]


@dataclass(frozen=True)
class GraphPass:
    """A named rewrite of a streamed component's graph before its weights are written (e.g. a fusion)."""

    name: str
    run: Callable[[ExportContext, onnx.ModelProto], None]


@dataclass(frozen=True)
class ComponentSpec:
    name: str  # the artifact's key in manifest.json
    file_name: str
    load: Callable[[ExportContext], Any]  # checkpoint -> transformers model (sets ctx.weight_bytes)
    rewrite: Callable[[ExportContext, Any], Any]  # transformers model -> the module to capture
    example_inputs: Callable[[ExportContext], tuple]
    dynamic_shapes: Callable[[ExportContext], Any]  # torch.export dims, built when capturing
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dim_names: dict[str, list[str | None]]  # graph I/O name -> per-axis symbolic dim name
    translation_table: Callable[[], dict]  # custom op -> onnxscript lowering
    steps: tuple[Step, ...]
    describe: Callable[[ExportContext], dict[str, Any]]  # the component's own contract fields
    keep_reference: bool = True  # False: free the transformers model after translation (verification reloads)
    # Streamed components load a skeleton (export.skeleton) and write each weight from the checkpoint after
    # translation; this returns the plan that packs them (None: float32 as read).
    weight_plan: Callable[[ExportContext, onnx.ModelProto, dict], Any] | None = None
    streamed: bool = False
    graph_passes: tuple[GraphPass, ...] = ()  # streamed specs: run on the weightless graph, in order

    def stage_names(self) -> list[str]:
        write = [*(p.name for p in self.graph_passes), WRITE_STAGE] if self.streamed else []
        return ["load checkpoint", "rewrite", "capture (torch.export)", "translate to ONNX", *write,
                *(step.name for step in self.steps)]


WRITE_STAGE = "write weights (streamed from the checkpoint)"


def io_record(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """Graph inputs and outputs with dtypes and (symbolic) dims, for the contract."""
    def describe(value: onnx.ValueInfoProto) -> dict[str, Any]:
        tensor = value.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, "shape": dims}

    return {"inputs": [describe(v) for v in model.graph.input], "outputs": [describe(v) for v in model.graph.output]}


def _capture(spec: ComponentSpec, ctx: ExportContext, module, args):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own LeafSpec deprecation notice
        return torch.export.export(module, args, dynamic_shapes=spec.dynamic_shapes(ctx), strict=False)


def _translate(spec: ComponentSpec, ctx: ExportContext, program, args):
    """The ONNX program; a non-streamed spec's graph is saved with its weights here."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        onnx_program = torch.onnx.export(
            program, args, input_names=list(spec.input_names), output_names=list(spec.output_names),
            opset_version=OPSET, custom_translation_table=spec.translation_table(), dynamo=True, optimize=True,
            verbose=False,
        )
        name_dims(onnx_program.model, spec.dim_names)
    if not spec.streamed:
        onnx_program.save(str(ctx.path), external_data=ctx.external)
    return onnx_program


def _weightless(ctx: ExportContext, onnx_program, module, names_by_storage) -> tuple[onnx.ModelProto, dict]:
    """(the graph without its weights, where each weight comes from)."""
    from qvl_compile.export.weight_writer import check_no_placeholder_constants, take_out_weights, weight_sources

    sources = weight_sources(module, names_by_storage, ctx.reader)
    proto = take_out_weights(onnx_program.model, set(sources))
    check_no_placeholder_constants(proto)
    return proto, sources


def graph_files(work_dir: Path, file_name: str) -> list[str]:
    """The graph and its external data files, graph first."""
    return [file_name] + sorted(p.name for p in work_dir.iterdir() if p.name.startswith(file_name + "."))


def export_component(spec: ComponentSpec, ctx: ExportContext) -> dict[str, Any]:
    """Write the component's graph into ctx.work_dir; return its artifact fields for the contract."""
    stages = Stages(spec.stage_names(), spec.name)
    ctx.path = ctx.work_dir / spec.file_name
    with stages.run("load checkpoint"):
        hf_model = spec.load(ctx)
        if spec.streamed:
            from qvl_compile.export.checkpoint_files import CheckpointReader
            from qvl_compile.export.skeleton import parameter_names

            ctx.reader = CheckpointReader(ctx.model_dir)
            names_by_storage = parameter_names(hf_model)
    with stages.run("rewrite"):
        module = spec.rewrite(ctx, hf_model)
    args = spec.example_inputs(ctx)
    with stages.run("capture (torch.export)"):
        program = _capture(spec, ctx, module, args)
    with stages.run("translate to ONNX"):
        onnx_program = _translate(spec, ctx, program, args)
        if spec.streamed:
            proto, sources = _weightless(ctx, onnx_program, module, names_by_storage)
    ctx.reference = hf_model if spec.keep_reference else None
    # Free the captured program and the rewritten module before the next stages: at 2B size each holds gigabytes.
    del program, onnx_program, module, hf_model, args
    release_memory()
    if spec.streamed:
        from qvl_compile.export.weight_writer import write_graph

        for graph_pass in spec.graph_passes:
            with stages.run(graph_pass.name):
                graph_pass.run(ctx, proto)
        with stages.run(WRITE_STAGE):
            write_graph(proto, sources, ctx.reader, ctx.path, ctx.external, spec.weight_plan(ctx, proto, sources)
                        if spec.weight_plan else None)
        del proto
    for step in spec.steps:
        with stages.run(step.name):
            step.run(ctx)
        release_memory()  # e.g. the quantizer's copy of the model, before verification loads the reference
    ctx.reference = None
    model = onnx.load(str(ctx.path), load_external_data=False)
    return {
        "files": [file_record(ctx.work_dir, name) for name in graph_files(ctx.work_dir, spec.file_name)],
        "opset": OPSET,
        **io_record(model),
        "target": ctx.target,
        **spec.describe(ctx),
        "stage_seconds": stages.seconds,
    }


CHECK_STAGE = "check (onnx.checker, onnxruntime load)"


def check_graph(ctx: ExportContext) -> None:
    """The check step every spec lists (`check_graph_file` on the component's graph)."""
    check_graph_file(ctx.path, ctx.target)


def check_graph_file(path: Path, target: Target) -> None:
    """onnx.checker with full shape inference, then an onnxruntime session on the target's execution provider."""
    from qvl_compile.export.ort_schemas import register_onnxruntime_schemas
    from qvl_compile.runtime.session import make_session

    register_onnxruntime_schemas()  # e.g. SimplifiedLayerNormalization, written by the RMSNorm fusion
    onnx.checker.check_model(str(path), full_check=True)
    make_session(path, [target.execution_provider])


@contextlib.contextmanager
def set_aside(work_dir: Path, file_name: str) -> Iterator[Path]:
    """Move a graph and its external data into a folder of work_dir for a pass that writes file_name anew
    (the graph's relative external-data location stays valid there); the folder is removed afterwards."""
    names = graph_files(work_dir, file_name)
    staged = work_dir / f"staging.{file_name}"
    staged.mkdir()
    for name in names:
        (work_dir / name).rename(staged / name)
    try:
        yield staged
    finally:
        shutil.rmtree(staged, ignore_errors=True)
