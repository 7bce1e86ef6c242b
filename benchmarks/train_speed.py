"""Training-step speed in each precision, on the batches a training config draws.

    python benchmarks/train_speed.py [--config configs/default_stage9.yaml] [--steps 60] [--precisions 32,bf16]

Draws ``--steps`` batches from the config's training mix (augmented as in training), then times forward,
backward, gradient clipping and an AdamW step on the same batches for each precision (fp32, or bf16 autocast
as Lightning's ``bf16-mixed`` does it), after 5 untimed warm-up steps each; data loading is not timed. Prints
steps per minute, images per second, the mean loss and how many steps had non-finite gradients. bf16 pays off
only where the CPU computes it natively (AVX512-BF16 or AMX; ``precision: auto`` in a config picks it there).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch
from rich.console import Console
from rich.table import Table

from texlens.training import (
    FormulaDataModule,
    LitImageToLatex,
    _build_model,
    _cpu_has_fast_bf16,
    _read_spec,
    _val_subset,
    build_vocab,
    load_config,
    load_initial,
)

WARMUP = 5


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/default_stage9.yaml")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per precision")
    parser.add_argument("--precisions", default="32,bf16", help="comma-separated: 32, bf16")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 120)

    cfg = load_config(args.config, ["num_workers=0"])
    train_samples = [_read_spec(spec) for spec in cfg.train]
    val_samples = [_val_subset(_read_spec(spec), 1) for spec in cfg.val]
    initial, vocab = load_initial(cfg.init_from) if cfg.init_from else (None, build_vocab(cfg, train_samples))
    loader = FormulaDataModule(cfg, vocab, train_samples, val_samples).train_dataloader()
    batches = list(itertools.islice(loader, WARMUP + args.steps))
    start = _build_model(cfg, vocab, initial).state_dict()
    console.print(
        f"{args.config}: {len(batches)} batches, {sum(b.images.shape[0] for b in batches[WARMUP:])} timed images; "
        f"native bf16: {_cpu_has_fast_bf16()}; torch threads: {torch.get_num_threads()}"
    )

    table = Table("precision", "steps/min", "images/s", "mean loss", "non-finite steps")
    for precision in args.precisions.split(","):
        if precision not in ("32", "bf16"):
            parser.error(f"unknown precision {precision!r}: use 32 or bf16")
        torch.manual_seed(cfg.seed)
        model = _build_model(cfg, vocab, initial)
        model.load_state_dict(start)
        model.train()
        lit = LitImageToLatex(model, vocab, cfg)  # training's loss and optimizer (no trainer: no schedule)
        optimizer = lit.configure_optimizers()["optimizer"]
        losses, bad, images = [], 0, 0
        for i, batch in enumerate(batches):
            if i == WARMUP:
                began = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(batch.images, batch.tgt_in)
            loss = lit.token_loss(logits, batch.tgt_out)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            if torch.isfinite(norm):
                optimizer.step()
            if i >= WARMUP:
                losses.append(loss.item())
                bad += not bool(torch.isfinite(norm))
                images += batch.images.shape[0]
        seconds = time.perf_counter() - began
        table.add_row(
            "fp32" if precision == "32" else "bf16 autocast",
            f"{60 * args.steps / seconds:.1f}",
            f"{images / seconds:.1f}",
            f"{sum(losses) / len(losses):.3f}",
            str(bad),
        )
    console.print(table)


if __name__ == "__main__":
    main()
