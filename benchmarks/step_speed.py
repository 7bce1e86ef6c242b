"""Time one decoder step by the number of hypotheses per image (greedy = 1, a k-wide beam = k).

    python benchmarks/step_speed.py [--model DIR] [--backend onnx-int8] [--beams 1,2,3,5] [--prefix 30] [--steps 200]

One real IM2LATEX-100K validation image (the third readable one, as `texlens predict` preprocesses it) is encoded
once; its decoder state is grown by ``--prefix`` tokens with k rows against one copy of the image's state, as
beam search holds it, and ``--steps`` further steps from that state are timed (the state is not advanced, so
every timed step sees the same prefix length). Prints the memory size and the mean milliseconds per step.
"""

from __future__ import annotations

import argparse
import time

import torch
from speed import val_images

from texlens.export import OnnxModel, ensure_onnx
from texlens.image import batch_images
from texlens.predictor import Predictor, resolve_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model directory or bundled name (default: bundled)")
    parser.add_argument("--backend", default="onnx-int8", choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--beams", default="1,2,3,5", help="comma list of hypotheses per image")
    parser.add_argument("--prefix", type=int, default=30, help="tokens fed before timing")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per beam width")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model_dir = resolve_model_dir(args.model)
    predictor = Predictor(model_dir, num_threads=args.threads)
    if args.backend == "torch":
        model = predictor.model
    else:
        int8 = args.backend == "onnx-int8"
        model = OnnxModel(ensure_onnx(model_dir, int8=int8), int8=int8, num_threads=args.threads)
    images, _ = batch_images([predictor.preprocess(val_images(3)[2])])
    h, w = model.feature_shape(*images.shape[-2:])
    print(
        f"image {tuple(images.shape[-2:])}, memory {h} x {w} = {h * w} cells, {args.backend}, {args.threads} thread(s)"
    )
    with torch.inference_mode():
        memory = model.encode(images)
        for k in (int(b) for b in args.beams.split(",")):
            state = model.reorder_state(model.init_state(memory), torch.zeros(k, dtype=torch.long))
            tokens = torch.full((k,), 5, dtype=torch.long)
            for _ in range(args.prefix):
                _, state, _ = model.step(tokens, state)
            start = time.perf_counter()
            for _ in range(args.steps):
                model.step(tokens, state)
            ms = (time.perf_counter() - start) * 1000 / args.steps
            print(f"{k} hypotheses: {ms:.3f} ms per step")


if __name__ == "__main__":
    main()
