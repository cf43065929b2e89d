"""GPU training throughput and peak memory: Base, ABN, MSABN (literal, efficient) and Puzzle-MSABN.

ResNet-50 at 352 px, batch 16, bf16 autocast, channels_last: the fine-grained recipe of Tables 4/5. Prints
images/s (median over timed steps after a warm-up) and peak GPU memory per model, with the card's name, and
writes them to paper_figures/gpu_throughput.json for the experiments' cost estimate.

usage (on a GPU machine): python benchmarks/gpu_train.py [--steps 30] [--warmup 10]
"""
import argparse
import statistics
import time
from pathlib import Path

import torch

from msabn.core import provenance, save_json
from msabn.models import create_model
from msabn.train import TrainConfig, TrainStep

MODELS = {
    "Base": (dict(arch="base"), False),
    "ABN": (dict(arch="abn"), False),
    "MSABN (literal)": (dict(arch="msabn"), False),
    "MSABN (efficient)": (dict(arch="msabn", variant="efficient"), False),
    "Puzzle-MSABN (literal)": (dict(arch="msabn"), True),
    "Puzzle-MSABN (efficient)": (dict(arch="msabn", variant="efficient"), True),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30); ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--size", type=int, default=352); ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--backbone", default="resnet50"); ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--out", default="paper_figures/gpu_throughput.json")
    a = ap.parse_args()
    if not torch.cuda.is_available(): raise SystemExit("this benchmark needs a CUDA GPU")
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    results = {}
    for name, (opts, puzzle) in MODELS.items():
        model = create_model(backbone=a.backbone, num_classes=a.classes, **opts).to(
            dev, memory_format=torch.channels_last
        )
        step = TrainStep(model, TrainConfig(puzzle=puzzle)).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(a.batch, 3, a.size, a.size, device=dev).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, a.classes, (a.batch,), device=dev)
        torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(a.warmup + a.steps):
            torch.cuda.synchronize(); t = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _, terms = step(x, y, 1.0)
            opt.zero_grad(set_to_none=True); terms["loss"].backward(); opt.step()
            torch.cuda.synchronize()
            if i >= a.warmup: times.append(time.perf_counter() - t)
        results[name] = {
            "images_per_s": a.batch / statistics.median(times),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        }
        print(
            f"{name:<26}{results[name]['images_per_s']:>10.1f} img/s{results[name]['peak_gib']:>8.2f} GiB", flush=True
        )
        del model, step, opt
        torch.cuda.empty_cache()
    save_json({"setting": vars(a), "results": results, "provenance": provenance("cuda")}, Path(a.out))


if __name__ == "__main__":
    main()
