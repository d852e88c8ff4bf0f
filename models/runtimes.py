"""What runs the network: torch, or ONNX Runtime on the CPU. Either takes a normalised float batch and gives
one `Output` per image on the CPU: the class probabilities, or the head's pooled features.

ONNX Runtime runs the version's `model.onnx`, exported from the same weights and checked against torch
(models/onnx_export.py), made on first load when a version lacks it. For pooled features its graph is cut
after the head's pooling and checked against torch's features once, at load.
"""
from __future__ import annotations

import enum
import importlib.util
import logging
from pathlib import Path

import torch

from models.archs import fold_batchnorm
from models.artifact import ModelMeta, load_artifact
from models.errors import ArtifactError, KimchiError

log = logging.getLogger(__name__)

CPU = ["CPUExecutionProvider"]
# ORT's intra-op workers spin between ops by default; here they would burn the cores the decode threads
# need (measured: torch's spinning OpenMP threads cost 5 ms -> 79 ms of CPU for one resample on a busy host).
ORT_SPINNING = "0"


class Output(enum.Enum):
    """What the network answers for each image."""

    PROBABILITIES = "probabilities"  # softmax over the classes
    # The head's concat pool (max then average) flattened: what its classifier layers read; the embeddings
    # of models/embed.py. On ONNX Runtime on the CPU too: torch eager made the embedding pass 0.81x the
    # engine's throughput (resnet18 at 460/224 on a 2-core CPU; bench/audit_bench.py).
    POOLED = "pooled"
    # Both from one forward pass, as a pair: what the engine runs when a version has an open-set check
    # (models/openset.py), and what its calibration and the audit read.
    BOTH = "both"


class TorchNet:
    """A version's torch module, batch norm folded into the convolutions (models.archs.fold_batchnorm)."""

    runtime = "torch"
    side_by_side = False  # one batch at a time

    def __init__(self, model: torch.nn.Module, device: torch.device, output: Output, half: bool,
                 channels_last: bool) -> None:
        self.model, self.device, self.output = model, device, output
        self.half, self.channels_last = half, channels_last
        if output is Output.PROBABILITIES:
            self.net, self.finish = model, lambda logits: torch.softmax(logits.float(), dim=1).cpu()
        else:  # head[0] is AdaptiveConcatPool2d and head[1] Flatten; the rest of the head reads their output
            body, head = model[0], model[1]
            self.net = body

            def finish(features: torch.Tensor):
                if output is Output.POOLED:  # pooled in float32, as the embeddings always were
                    return head[1](head[0](features.float())).cpu()
                # the head as the whole model runs it (under bf16 autocast too), so the probabilities are
                # PROBABILITIES' own
                pooled = head[1](head[0](features))
                return torch.softmax(head[2:](pooled).float(), dim=1).cpu(), pooled.float().cpu()

            self.finish = finish

    @classmethod
    def load(cls, folder: Path, device: torch.device, output: Output, half: bool = False,
             channels_last: bool = True) -> tuple[TorchNet, ModelMeta]:
        model, meta = load_artifact(folder, device=device)
        model = fold_batchnorm(model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return cls(model, device, output, half, channels_last), meta

    def __call__(self, x: torch.Tensor, wide: bool = True):
        """A normalised float batch on the device to the output on the CPU (a pair for Output.BOTH); `wide`
        means nothing to torch."""
        with torch.inference_mode():
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.half:
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    return self.finish(self.net(x))
            return self.finish(self.net(x))


class OnnxNet:
    """A version's model.onnx in ONNX Runtime. `wide` runs a batch on every intra-op thread (a lone batch);
    `narrow`, when there, on the calling thread alone, so that several batches can run at once
    (engine_config.batch_plan)."""

    runtime = "onnx"
    # Largest difference of the pooled features from torch's, relative to the largest feature: ONNX Runtime
    # adds in other orders (measured ~1e-6; the export's own check allows 1e-4 on probabilities).
    POOLED_TOLERANCE = 1e-3

    def __init__(self, output: Output, names: list[str], wide, narrow=None) -> None:
        self.output, self.names = output, names
        self.wide, self.narrow = wide, narrow

    @property
    def side_by_side(self) -> bool:
        return self.narrow is not None

    def __call__(self, x: torch.Tensor, wide: bool = True):
        from models.onnx_export import INPUT

        session = self.wide if wide or self.narrow is None else self.narrow
        with torch.inference_mode():
            outs = [torch.from_numpy(o) for o in session.run(self.names, {INPUT: x.contiguous().numpy()})]
            if self.output is Output.POOLED:
                return outs[0]
            probabilities = torch.softmax(outs[0], dim=1)
            return probabilities if self.output is Output.PROBABILITIES else (probabilities, outs[1])


def open_onnx(folder: Path, meta: ModelMeta, output: Output, threads: int, *, required: bool, narrow: bool = False,
              channels_last: bool = True) -> OnnxNet | None:
    """The version's model on ONNX Runtime, model.onnx exported now if missing or unusable; None (the reason
    logged) when it cannot be had and it is not `required`. With `narrow`, also a one-thread session for
    batches side by side."""
    if importlib.util.find_spec("onnxruntime") is None:
        if required:
            raise KimchiError("The CPU runtime is onnx, but onnxruntime is not installed; "
                              "pip install onnxruntime, or use auto or torch.")
        log.info("onnxruntime is not installed: %s runs on torch", folder.name)
        return None
    try:
        options = [ort_options(threads, alone=True), ort_options(1)] if narrow and threads > 1 else [ort_options(threads)]
        net = _sessions(folder, meta, output, options)
        if output is Output.POOLED:
            _check_pooled(net, folder, meta.preprocessing.size, channels_last)
        elif output is Output.BOTH:  # the logits are the checked model's own; the pool is checked by shape, so
            _check_pool_shape(net, meta)  # serving (`kimchi-train predict` too) never loads torch's model

        return net
    except Exception as err:
        if required:
            detail = str(err) if isinstance(err, KimchiError) else f"{err.__class__.__name__}: {err}"
            raise ArtifactError(f"{folder.name} cannot run on ONNX Runtime ({detail.rstrip('.')}); "
                                f"use the CPU runtime auto or torch.") from err
        log.error("ONNX Runtime cannot serve %s; serving it with torch", folder.name, exc_info=True)
        return None


def ort_options(threads: int, alone: bool = False):
    """ONNX Runtime's session options as the engine plans them: `threads` intra-op threads, sequential,
    quiet. Idle threads sleep rather than spin, as they share the cores with the decoders; but a session
    that only runs batches with nothing beside them (`alone`: the wide one when lanes exist) spins
    during a run and stops when it returns. Measured for one photo with resnet18 on 2 threads: 47 ms
    sleeping between ops, 27 ms spinning; and 0.1 ms of CPU in the 100 ms after the run, where spinning
    without the stop burns 41 ms."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if alone else ORT_SPINNING)
    if alone:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def _sessions(folder: Path, meta: ModelMeta, output: Output, options: list) -> OnnxNet:
    """One session per entry of `options` (see ort_options), the first wide, on the version's checked
    model.onnx; for pooled features, on its graph answering the head's pooling too (or instead)."""
    import onnxruntime as ort

    from models.onnx_export import OUTPUT

    source, checked = _checked_model(folder, meta, options[0])
    if output is Output.PROBABILITIES:
        names, sessions, options = [OUTPUT], [checked], options[1:]
    else:
        source, pooled = _with_pool(source, keep_logits=output is Output.BOTH)
        names, sessions = ([OUTPUT, pooled] if output is Output.BOTH else [pooled]), []
    sessions += [ort.InferenceSession(source, o, providers=CPU) for o in options]
    return OnnxNet(output, names, *sessions)


def _checked_model(folder: Path, meta: ModelMeta, options):
    """(source, session): the version's model.onnx (its path, or the bytes of a fresh export when it is
    missing or does not match the version) and a session on it with `options`."""
    import onnxruntime as ort

    from models.onnx_export import ONNX, export_onnx, onnx_problem

    path = folder / ONNX
    if path.is_file():
        try:
            session = ort.InferenceSession(str(path), options, providers=CPU)
            problem = onnx_problem(folder, session.get_modelmeta().custom_metadata_map, len(meta.vocab),
                                   meta.preprocessing.size)
        except Exception as err:  # a damaged file: onnxruntime's error types vary by version
            problem = f"it cannot be loaded ({err.__class__.__name__})"
        if problem is None:
            return str(path), session
        log.warning("%s is not usable: %s; exporting it again", path, problem)
    else:
        log.info("%s has no %s yet; exporting it", folder.name, ONNX)
    data = export_onnx(folder).data
    return data, ort.InferenceSession(data, options, providers=CPU)


def _with_pool(source: str | bytes, keep_logits: bool) -> tuple[bytes, str]:
    """The graph answering the head's flattened pool, instead of the logits or (`keep_logits`) after them,
    and that output's name. Without the logits, ONNX Runtime prunes the rest of the head."""
    import onnx

    graph = onnx.load_model_from_string(source) if isinstance(source, bytes) else onnx.load(source)
    flat = [node for node in graph.graph.node if node.op_type == "Flatten"][-1]  # the head's; bodies have none
    if not keep_logits:
        del graph.graph.output[:]
    graph.graph.output.append(onnx.helper.make_tensor_value_info(flat.output[0], onnx.TensorProto.FLOAT, None))
    return graph.SerializeToString(), flat.output[0]


def _check_pool_shape(net: OnnxNet, meta: ModelMeta) -> None:
    """Raise unless the graph's second output is the head's concat pool: 2 x the body's channels, finite."""
    from models.archs import get_spec

    size = meta.preprocessing.size
    _, pooled = net(torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)))
    expected = 2 * get_spec(meta.arch).n_features
    if tuple(pooled.shape) != (1, expected) or not bool(torch.isfinite(pooled).all()):
        raise ArtifactError(f"its pooled output has the shape {tuple(pooled.shape)}, not (1, {expected})")


def _check_pooled(net: OnnxNet, folder: Path, size: int, channels_last: bool) -> None:
    """Raise unless the graph gives torch's pooled features on a random batch (a wrong cut is caught here)."""
    reference_net, _ = TorchNet.load(folder, torch.device("cpu"), Output.POOLED, channels_last=channels_last)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    reference = reference_net(x)
    pooled = net(x)[1] if net.output is Output.BOTH else net(x)
    gap = float((pooled - reference).abs().max() / reference.abs().max().clamp(min=1.0))
    if gap > OnnxNet.POOLED_TOLERANCE:
        raise ArtifactError(f"its pooled features differ from torch's by {gap:.1e}")
