"""The texlens web app (run by ``texlens ui``): upload, paste or draw a formula, get its LaTeX.

Streamlit runs this script top to bottom on every interaction. The page is drawn first; the model (and with
it torch) is loaded only at the end of the first run, so the page appears at once. Predictions run in this
process with a cached ``Predictor``, or go to a running ``texlens serve`` when ``--api URL`` is given.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import streamlit as st

from texlens import DEFAULT_BEAM

IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "webp", "gif", "tif", "tiff"]
MAX_HISTORY = 50


def read_options() -> tuple[str | None, str | None]:
    """The API URL and model: ``streamlit run ui_app.py -- --api URL --model M``, else TEXLENS_UI_API/TEXLENS_MODEL."""
    api, model = os.environ.get("TEXLENS_UI_API") or None, os.environ.get("TEXLENS_MODEL") or None
    if Path(sys.argv[0]).name == Path(__file__).name:  # not when imported by a test runner
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument("--api")
        parser.add_argument("--model")
        args, _ = parser.parse_known_args(sys.argv[1:])
        api, model = args.api or api, args.model or model
    return (api.rstrip("/") if api else None), model


@st.cache_resource(show_spinner=False)
def get_predictor(model: str | None) -> Any:
    """The Predictor, loaded once per process (torch is imported here, not at page load)."""
    from texlens.predictor import Predictor

    # TEXLENS_MAX_TOKENS caps the length of the LaTeX read (and so the time one image can take).
    return Predictor(model, max_len=int(os.environ.get("TEXLENS_MAX_TOKENS") or 256))


def predict_local(data: bytes, model: str | None, beam: int, attention: bool) -> dict[str, Any]:
    """Read an image with the in-process Predictor; an unusable image gives {"error": ...}."""
    from texlens.image import ImageError

    try:
        prediction = get_predictor(model).predict(data, beam=beam, attention=attention)
    except ImageError as exc:
        return {"error": str(exc).replace("image bytes: ", "", 1)}
    result = {
        "latex": prediction.latex,
        "confidence": prediction.confidence,
        "ms": prediction.ms,
        "tokens": prediction.tokens,
        "alternatives": [{"latex": latex, "confidence": conf} for latex, conf in prediction.alternatives],
        "handwritten": prediction.handwritten,
        "glyph_height": prediction.glyph_height,
    }
    if attention and prediction.attention is not None and len(prediction.tokens):
        from texlens.visualize import save_attention_map

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "attention.png"
            save_attention_map(prediction, out)
            result["attention_png"] = out.read_bytes()
    return result


def predict_remote(data: bytes, name: str, api: str, beam: int) -> dict[str, Any]:
    """Read an image with a running ``texlens serve``; its error detail is shown as it is."""
    import httpx

    try:
        response = httpx.post(
            f"{api}/predict", files={"file": (name, data)}, data={"beam": str(beam)}, timeout=120
        )
    except httpx.HTTPError as exc:
        return {"error": f"cannot reach the API at {api}: {exc}"}
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        return {"error": f"API answered {response.status_code}: {detail}"}
    return response.json()


def set_input(name: str, data: bytes, source: str) -> None:
    """Make an image the one shown and read."""
    st.session_state["current"] = {"name": name, "data": data, "source": source}


def result_for(
    current: dict[str, Any], api: str | None, model: str | None, beam: int, attention: bool
) -> dict:
    """The (cached) result of reading the current image; a new result is added to the history."""
    digest = hashlib.sha1(current["data"]).hexdigest()
    key = (digest, beam, attention and not api)
    results = st.session_state.setdefault("results", {})
    if key not in results:
        with st.spinner("Reading the formula…"):
            if api:
                results[key] = predict_remote(current["data"], current["name"], api, beam)
            else:
                results[key] = predict_local(current["data"], model, beam, attention)
        result = results[key]
        history = st.session_state.setdefault("history", [])
        history.insert(
            0,
            {
                "time": time.strftime("%H:%M:%S"),
                "source": current["source"],
                "image": current["name"],
                "latex": result.get("latex", ""),
                "confidence": round(result["confidence"], 4) if "confidence" in result else None,
                "error": result.get("error", ""),
            },
        )
        del history[MAX_HISTORY:]
    return results[key]


def show_result(result: dict[str, Any], current: dict[str, Any]) -> None:
    """The rendered formula, its LaTeX to copy, confidence, alternatives and attention map."""
    st.subheader("Result")
    st.caption(f"Read from {current['name']} ({current['source']})")
    if "error" in result:
        st.error(result["error"])
        return
    latex = result["latex"]
    if latex:
        st.latex(latex)
    else:
        st.warning("The model read no symbols in this image.")
    st.code(latex, language="latex")
    c1, c2 = st.columns(2)
    c1.metric("Confidence", f"{result['confidence']:.1%}")
    c2.metric("Time", f"{result['ms']:.0f} ms")
    if result.get("handwritten") is not None:
        read_as = "Read as handwriting" if result["handwritten"] else "Read as print"
        height = result.get("glyph_height")
        st.caption(read_as if height is None else f"{read_as}, glyphs {height:g} px high")
    if result.get("alternatives"):
        st.markdown("**Other readings (beam search)**")
        for alt in result["alternatives"]:
            st.code(alt["latex"], language="latex")
            st.caption(f"confidence {alt['confidence']:.1%}")
    if result.get("attention_png"):
        with st.expander("Where the model looked for each symbol (attention)", expanded=False):
            st.image(result["attention_png"], width="stretch")


def show_input(current: dict[str, Any]) -> None:
    """The image being read, decoded as the model gets it (grey); a file that does not decode is only named."""
    from texlens.image import ImageError, load_image

    caption = f"{current['name']} ({current['source']})"
    try:
        st.image(load_image(current["data"]), caption=caption)
    except ImageError:
        st.caption(f"{caption}: cannot be shown")


def draw_tab() -> None:
    """A canvas to draw a formula with the mouse or a finger."""
    try:
        from streamlit_drawable_canvas import st_canvas
    except ImportError:
        st.info(
            "Drawing needs the `streamlit-drawable-canvas` package: `pip install streamlit-drawable-canvas`."
        )
        return
    stroke = st.slider("Pen width", 2, 12, 4, key="pen")
    canvas = st_canvas(
        stroke_width=stroke,
        stroke_color="#000000",
        background_color="#ffffff",
        height=200,
        width=420,
        drawing_mode="freedraw",
        return_image_data=True,
        key="canvas",
    )
    drawn = bool(canvas.json_data and canvas.json_data.get("objects"))
    if st.button("Read the drawing", disabled=not drawn, type="primary"):
        set_input("drawing.png", canvas.image_bytes, "drawn")


def main() -> None:
    """Draw the page."""
    api, model = read_options()
    st.set_page_config(page_title="texlens", page_icon="∑", layout="wide")
    st.title("texlens")
    st.caption(
        "A picture of a math formula in, its LaTeX out: printed or handwritten, screenshot, scan or photo."
    )

    with st.sidebar:
        st.header("Settings")
        beam = st.slider(
            "Beam width",
            1,
            8,
            DEFAULT_BEAM,
            key="beam",
            help="1 = greedy decoding; wider beams also list other readings.",
        )
        attention = st.checkbox(
            "Attention map", value=True, disabled=bool(api), help="Only with the in-process model."
        )
        st.caption(
            f"Using the API at {api}" if api else f"Model: {model or 'bundled default'} (in this process)"
        )
        if st.button("Clear history"):
            st.session_state["history"] = []

    left, right = st.columns(2, gap="large")
    with left:
        upload_tab, paste_tab, draw_tab_ = st.tabs(["Upload", "Paste", "Draw"])
        with upload_tab:
            upload = st.file_uploader(
                "Drop an image of a formula here, or browse", type=IMAGE_TYPES, key="upload"
            )
            if upload is not None and st.session_state.get("upload_id") != upload.file_id:
                st.session_state["upload_id"] = upload.file_id
                set_input(upload.name, upload.getvalue(), "uploaded")
        with paste_tab:
            st.caption("Copy a screenshot, click the box below and paste it (Ctrl+V / ⌘V), then press Enter.")
            pasted = st.chat_input(
                "Paste a formula screenshot here", accept_file=True, file_type=IMAGE_TYPES, key="paste"
            )
            if pasted is not None and pasted.files:
                file = pasted.files[0]
                set_input(file.name or "pasted.png", file.getvalue(), "pasted")
        with draw_tab_:
            draw_tab()
        current = st.session_state.get("current")
        if current is not None:
            show_input(current)

    with right:
        if current is None:
            st.info("Upload, paste or draw a formula to read it.")
        else:
            show_result(result_for(current, api, model, beam, attention), current)

    history = st.session_state.get("history") or []
    if history:
        st.subheader("History")
        st.dataframe(history, width="stretch", hide_index=True)

    if not api:
        # After the page is on screen: load the model now so the first prediction is quick.
        with st.sidebar, st.spinner("Loading the model…"):
            try:
                get_predictor(model)
            except Exception as exc:  # a missing or broken model: say so, keep the page usable
                st.error(f"Cannot load model {model or 'default'}: {exc}")


main()
