"""The ``texlens`` command: a thin layer over the library, each command a few lines."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from texlens import DEFAULT_BEAM

app = typer.Typer(
    help="texlens reads pictures of math formulas (printed or handwritten) and writes their LaTeX.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(
    help="Prepare datasets: normalise, clean, split, render with TeX Live, augment.", no_args_is_help=True
)
export_app = typer.Typer(help="Export a model for fast runtimes.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(export_app, name="export")
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


# ---------------------------------------------------------------- predict / eval / train


def _inputs(images: list[Path]) -> list[Any]:
    """What to read: files as given, a folder's image files in its place (a folder with none stays, to be
    reported), ``-`` the image on standard input."""
    from texlens.image import image_files

    sources: list[Any] = []
    for path in images:
        if str(path) == "-":
            if any(isinstance(s, io.BytesIO) for s in sources):
                _fail("'-' (the image on standard input) can be given only once")
            stdin = io.BytesIO(sys.stdin.buffer.read())
            stdin.name = "-"  # the name its prediction and any error carry
            sources.append(stdin)
        else:
            sources.extend((image_files(path) if path.is_dir() else []) or [path])
    return sources


# predict's and eval's switch for second reads (texlens.predictor.SECOND_READ_BELOW)
SecondRead = Annotated[
    bool,
    typer.Option(
        help="Read an image the model is unsure of again, at the other scale (printed / handwriting) and a "
        "little larger, and keep the surest read; --no-second-read: one read, at the router's scale (faster)."
    ),
]


@app.command()
def predict(
    images: Annotated[
        list[Path],
        typer.Argument(
            help="Image files (PNG, JPEG, BMP, WebP, GIF, TIFF), folders (their images, by name) or - "
            "(one image on standard input, e.g. from the clipboard)."
        ),
    ],
    model: Annotated[
        str | None, typer.Option(help="Model directory or bundled model name (default: bundled).")
    ] = None,
    beam: Annotated[
        int, typer.Option(help="Beam width; 1 = greedy (faster, a little less accurate).")
    ] = DEFAULT_BEAM,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    attention: Annotated[
        Path | None, typer.Option(help="Write an attention heat map PNG (first image).")
    ] = None,
    backend: Annotated[str, typer.Option(help="torch, onnx or onnx-int8.")] = "torch",
    second_read: SecondRead = True,
) -> None:
    """Write the LaTeX of each image, one line per image."""
    from texlens.predictor import Predictor

    try:
        predictor = Predictor(model, backend=backend, second_read=second_read)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    sources = _inputs(images)
    failed = 0
    for result in predictor.predict_paths(sources, beam=beam, attention=attention is not None):
        if as_json:
            print(json.dumps(result.to_json(), ensure_ascii=False), flush=True)
        elif result.error:
            print("", flush=True)
            err.print(f"{result.image}: {result.error}")
        else:
            print(result.latex, flush=True)
        failed += bool(result.error)
        if attention is not None and result.attention is not None:
            from texlens.visualize import save_attention_map

            save_attention_map(result, attention)
            attention = None
    if failed == len(sources):
        raise typer.Exit(1)


@app.command("eval")
def evaluate_cmd(
    model: Annotated[str | None, typer.Option(help="Model directory (default: bundled).")] = None,
    data: Annotated[
        Path, typer.Option(help="Dataset: folder with labels.tsv, IM2LATEX list layout or CROHME captions.")
    ] = ...,
    beam: Annotated[
        int, typer.Option(help="Beam width; 1 = greedy (faster, a little less accurate).")
    ] = DEFAULT_BEAM,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N samples only.")] = None,
    image_match: Annotated[
        bool, typer.Option(help="Also render prediction and reference with TeX and compare.")
    ] = False,
    errors: Annotated[
        Path | None, typer.Option(help="Write a per-sample CSV of errors, worst first.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    backend: Annotated[str, typer.Option(help="torch, onnx or onnx-int8.")] = "torch",
    second_read: SecondRead = True,
) -> None:
    """Measure a model on a dataset: BLEU-4, edit similarity, exact match, ExpRate, image match, speed."""
    from texlens.evaluate import evaluate, print_report

    metrics = evaluate(
        model,
        data,
        beam=beam,
        limit=limit,
        image_match=image_match,
        errors_csv=errors,
        backend=backend,
        second_read=second_read,
    )
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        print_report(metrics)


@app.command()
def train(
    config: Annotated[Path, typer.Option(help="YAML training config (see configs/).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides, e.g. max_steps=100.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoints/last.ckpt.")] = False,
) -> None:
    """Train a model (or MLM-pre-train its decoder) with PyTorch Lightning."""
    from texlens.training import load_config
    from texlens.training import train as run_training

    cfg = load_config(config, overrides or [])
    out = run_training(cfg, resume=resume)
    err.print(f"model written to {out}")


# ---------------------------------------------------------------- data


@data_app.command("normalize")
def data_normalize() -> None:
    """Read formulas on standard input, write their canonical token forms (an unparsable one: empty line)."""
    from texlens.latex import LatexError, normalize

    for lineno, line in enumerate(sys.stdin, 1):
        try:
            print(normalize(line.rstrip("\n")))
        except LatexError as e:
            print()
            err.print(f"line {lineno}: {e}")


@data_app.command("render")
def data_render(
    formulas: Annotated[Path, typer.Argument(help="Text file, one raw formula per line.")],
    out_dir: Annotated[Path, typer.Argument(help="Output dataset folder (images/ + labels.tsv).")],
    fonts: Annotated[
        str,
        typer.Option(help="Comma list of fonts (texlens.data.render.FONTS): cm, times, euler, helvet, ..."),
    ] = "cm",
    dpi: Annotated[str, typer.Option(help="DPI or range LO-HI.")] = "200",
    jobs: Annotated[int, typer.Option(help="Parallel TeX processes.")] = 2,
    chunk_size: Annotated[int, typer.Option(help="Formulas per TeX document.")] = 1000,
) -> None:
    """Render formulas to a dataset with TeX Live (latex + dvipng)."""
    from texlens.data.render import render_formulas

    lines = formulas.read_text(encoding="utf-8", errors="replace").splitlines()
    lo, _, hi = dpi.partition("-")
    dpi_arg: int | tuple[int, int] = (int(lo), int(hi)) if hi else int(lo)
    report = render_formulas(
        lines, out_dir, fonts=fonts.split(","), dpi=dpi_arg, jobs=jobs, chunk_size=chunk_size
    )
    err.print(report.summary(), markup=False, soft_wrap=True)


@data_app.command("check")
def data_check(path: Annotated[Path, typer.Argument(help="Dataset in any supported format.")]) -> None:
    """Read a dataset and report its size and every malformed line."""
    from texlens.data.formats import format_issues, read_dataset

    samples, issues = read_dataset(path)
    print(f"{path}: {len(samples)} samples, {len(issues)} issues")
    if issues:
        print(format_issues(issues))


@data_app.command("prepare")
def data_prepare(
    source: Annotated[
        Path, typer.Argument(help="Labelled images: folder with labels.tsv, IM2LATEX lists or CROHME.")
    ],
    out_dir: Annotated[Path, typer.Argument(help="Output folder in the IM2LATEX list layout.")],
    seed: Annotated[int, typer.Option()] = 0,
    split: Annotated[str, typer.Option(help="train,validate,test fractions.")] = "0.8,0.1,0.1",
) -> None:
    """The seed's preparation: filter bad labels, pair with images, shuffle, split, write lists + vocabulary."""
    from texlens.data.prepare import prepare_dataset

    fractions = tuple(float(x) for x in split.split(","))
    report = prepare_dataset(source, out_dir, split=fractions, seed=seed)
    print(report.summary())


@data_app.command("vocab")
def data_vocab(
    sources: Annotated[list[Path], typer.Argument(help="Datasets to read labels from.")],
    out: Annotated[Path, typer.Option(help="Vocabulary JSON to write.")] = Path("vocab.json"),
    min_freq: Annotated[int, typer.Option()] = 1,
) -> None:
    """Build a vocabulary (JSON) from the labels of datasets."""
    from texlens.data.formats import read_dataset
    from texlens.latex import Vocab

    labels = [s.latex for src in sources for s in read_dataset(src)[0]]
    vocab = Vocab.build(labels, min_freq=min_freq)
    vocab.save(out)
    print(f"{len(vocab)} tokens from {len(labels)} labels -> {out}")


@data_app.command("contact-sheet")
def data_contact_sheet(
    dataset: Annotated[Path, typer.Argument(help="Dataset whose images to show.")],
    out: Annotated[Path, typer.Argument(help="PNG to write.")],
    rows: Annotated[int, typer.Option()] = 8,
    strength: Annotated[float, typer.Option(help="Augmentation strength (0 = none).")] = 1.0,
    seed: Annotated[int, typer.Option()] = 0,
    kind: Annotated[
        str, typer.Option(help="Perturbations: print, or handwriting (adds per-symbol jitter).")
    ] = "print",
) -> None:
    """Draw originals and augmented variants side by side: what the model sees in training."""
    import random

    import numpy as np

    from texlens.data.augment import AUGMENT_KINDS, build_augment, contact_sheet
    from texlens.data.formats import read_dataset
    from texlens.image import load_image

    if kind not in AUGMENT_KINDS:
        raise typer.BadParameter(f"--kind is one of {', '.join(AUGMENT_KINDS)}, got {kind!r}")

    samples = read_dataset(dataset)[0]
    picked = random.Random(seed).sample(samples, min(rows, len(samples)))
    images = [np.asarray(load_image(s.image)) for s in picked]
    augment = build_augment(strength, seed=seed, config=AUGMENT_KINDS[kind])
    contact_sheet(images, out, augment, labels=[s.latex for s in picked])
    print(out)


@data_app.command("build")
def data_build(
    shared: Annotated[Path, typer.Option(help="The shared data folder.")] = Path("../shared/data"),
    out: Annotated[Path, typer.Option(help="Where datasets are written.")] = Path("datasets"),
    fonts: Annotated[
        str | None, typer.Option(help="Training fonts (default: texlens.data.render.MAIN_FONTS).")
    ] = None,
    val_font: Annotated[str, typer.Option(help="Held-out font for cn_math validation.")] = "euler",
    limit: Annotated[
        int | None, typer.Option(help="Use at most N formulas per split (quick builds).")
    ] = None,
    jobs: Annotated[int, typer.Option()] = 2,
    synth: Annotated[int, typer.Option(help="Recombined formulas to render for training.")] = 30000,
    synth_im: Annotated[
        int, typer.Option(help="Formulas recombined from IM2LATEX training formulas only (train_synth_im).")
    ] = 20000,
    words: Annotated[
        int, typer.Option(help="Training formulas with upright words added (train_words).")
    ] = 20000,
    bold: Annotated[
        int, typer.Option(help="Training formulas with symbols set in bold (train_bold).")
    ] = 10000,
    more_fonts: Annotated[
        str | None, typer.Option(help="Fonts of train_fonts (default: texlens.data.render.MORE_FONTS).")
    ] = None,
    more_fonts_count: Annotated[int, typer.Option(help="Formulas train_fonts renders.")] = 24000,
    extra_fonts: Annotated[
        str | None, typer.Option(help="Fonts of train_fonts2 (default: texlens.data.render.EXTRA_FONTS).")
    ] = None,
    extra_fonts_count: Annotated[int, typer.Option(help="Formulas train_fonts2 renders.")] = 20000,
    only: Annotated[
        str | None, typer.Option(help="Comma list of the sets to write, e.g. train_fonts (default: all).")
    ] = None,
) -> None:
    """Build the training and validation sets from ../shared/data (rendered, real and handwritten)."""
    from texlens.data.build import build_datasets
    from texlens.data.render import EXTRA_FONTS, MAIN_FONTS, MORE_FONTS

    try:
        report = build_datasets(
            shared,
            out,
            fonts=fonts.split(",") if fonts else MAIN_FONTS,
            val_font=val_font,
            limit=limit,
            jobs=jobs,
            synth=synth,
            synth_im=synth_im,
            words=words,
            bold=bold,
            more_fonts=more_fonts.split(",") if more_fonts else MORE_FONTS,
            more_fonts_count=more_fonts_count,
            extra_fonts=extra_fonts.split(",") if extra_fonts else EXTRA_FONTS,
            extra_fonts_count=extra_fonts_count,
            only=set(only.split(",")) if only else None,
        )
    except ValueError as e:
        _fail(str(e), 2)
    print(report)


# ---------------------------------------------------------------- export / serve / ui


@export_app.command("onnx")
def export_onnx_cmd(
    model_dir: Annotated[
        Path, typer.Argument(help="Model directory (safetensors + config.json + vocab.json).")
    ],
    out_dir: Annotated[Path, typer.Argument(help="Where to write encoder.onnx and decoder.onnx.")],
    int8: Annotated[bool, typer.Option(help="Also apply dynamic int8 quantisation.")] = False,
) -> None:
    """Export encoder and decoder (with cache) to ONNX for onnxruntime."""
    from texlens.export import export_onnx

    print(export_onnx(model_dir, out_dir, int8=int8))


@export_app.command("model")
def export_model_cmd(
    checkpoint: Annotated[
        Path, typer.Argument(help="Training checkpoint (.ckpt), e.g. runs/default/checkpoints/last.ckpt.")
    ],
    out_dir: Annotated[Path, typer.Argument(help="Model directory to write.")],
    fp16: Annotated[
        bool, typer.Option(help="Store weights in half precision (half the size; loaded as fp32).")
    ] = False,
    average_with: Annotated[
        list[Path] | None,
        typer.Option(
            help="Average the weights with this checkpoint or model directory (repeatable): e.g. a run's "
            "last checkpoints, or the end of the run it continued. Same architecture and vocabulary."
        ),
    ] = None,
    glyph_height: Annotated[
        float | None,
        typer.Option(
            help="Read printed images at this glyph height in pixels instead of the trained one "
            "(preprocess.target_glyph_height in config.json; choose it with benchmarks/glyph_height.py)."
        ),
    ] = None,
) -> None:
    """Write a model directory (safetensors + config.json + vocab.json) from a training checkpoint or model dir.

    config.json keeps the preprocessing the model was trained with; a router already in OUT_DIR stays.
    """
    from texlens.image import PreprocessConfig
    from texlens.models import average_weights, save_model
    from texlens.training import load_initial, trained_preprocess, write_preprocess

    preprocess = trained_preprocess(checkpoint)
    if glyph_height is not None:
        preprocess.pop("target_glyph_height", None)  # the chosen height replaces a trained one
        preprocess = {"target_glyph_height": glyph_height, **preprocess}
        try:
            PreprocessConfig(**preprocess)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--glyph-height") from exc
    model, vocab = load_initial(checkpoint)
    if average_with:
        others = [load_initial(path) for path in average_with]
        for path, (_, other_vocab) in zip(average_with, others, strict=True):
            if other_vocab.itos != vocab.itos:
                raise typer.BadParameter(f"{path} has another vocabulary than {checkpoint}")
        try:
            model = average_weights([model, *(other for other, _ in others)])
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    model_dir = save_model(model.eval().half() if fp16 else model.eval(), vocab, out_dir)
    write_preprocess(model_dir, preprocess)
    print(model_dir)


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar="TEXLENS_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="TEXLENS_PORT")] = 8000,
    model: Annotated[str | None, typer.Option(envvar="TEXLENS_MODEL")] = None,
    workers: Annotated[int, typer.Option(help="Uvicorn worker processes.")] = 1,
) -> None:
    """Serve the HTTP API (FastAPI on uvicorn); OpenAPI docs at /docs."""
    from texlens.serve.api import run_server

    run_server(host=host, port=port, model=model, workers=workers)


@app.command()
def ui(
    port: Annotated[int, typer.Option()] = 8501,
    api: Annotated[str | None, typer.Option(help="Use a running `texlens serve` at this URL.")] = None,
    model: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Open the Streamlit web app."""
    from texlens.serve.ui import launch

    launch(port=port, api=api, model=model)


if __name__ == "__main__":
    app()
