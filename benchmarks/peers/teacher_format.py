"""Does a teacher's weight memory format change its forward time on channels-last batches?

    .venv/bin/python benchmarks/peers/teacher_format.py [--threads 2] [--reps 12]

torchvision ResNet-18 and ResNet-50 (10 classes, random weights, eval, inference mode), batch 128
at 32x32: the same weights NCHW and channels-last, on a channels-last batch (and NCHW on an NCHW
batch), timed interleaved; prints the median milliseconds per forward as JSON. kdlight converts
its teacher to channels-last when the batches are (``data.channels_last``); the timm driver here
(``timm_kd.py``) converts only the student, as ``train.py`` converts its ``model``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torchvision


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=12)
    p.add_argument(
        "--models", default="resnet18,resnet50", help="comma-separated torchvision names"
    )
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = {"threads": a.threads, "reps": a.reps, "batch": [128, 3, 32, 32], "ms": {}}
    for name in [m.strip() for m in a.models.split(",") if m.strip()]:
        nchw = getattr(torchvision.models, name)(num_classes=10).eval()
        nhwc = getattr(torchvision.models, name)(num_classes=10).eval()
        nhwc.load_state_dict(nchw.state_dict())
        nhwc.to(memory_format=torch.channels_last)
        x = torch.randn(128, 3, 32, 32)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        cases = {
            "nchw_weights_nhwc_batch": (nchw, x_cl),
            "nhwc_weights_nhwc_batch": (nhwc, x_cl),
            "nchw_weights_nchw_batch": (nchw, x),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        with torch.inference_mode():
            for net, batch in cases.values():  # warm-up
                net(batch)
                net(batch)
            for _ in range(a.reps):
                for key, (net, batch) in cases.items():
                    t0 = time.perf_counter()
                    net(batch)
                    times[key].append(time.perf_counter() - t0)
        out["ms"][name] = {k: round(1000 * statistics.median(v), 1) for k, v in times.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
