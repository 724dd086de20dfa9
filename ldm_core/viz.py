"""Figures: image grids, loss curves (matplotlib, torchvision's ``make_grid``), and sliders that work live and
in the static HTML book."""

from __future__ import annotations

import base64
import inspect
import io
import itertools
import json
import os
import textwrap
import uuid
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torchvision.utils import make_grid

from .data import to_unit_range


def image_grid(x: torch.Tensor, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """Tile images x (B, C, H, W) in [-1, 1] into one (H', W', 3) float array in [0, 1], ``nrow`` per row."""
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got {tuple(x.shape)}")
    grid = make_grid(to_unit_range(x.detach().float().cpu()), nrow=nrow, padding=padding, pad_value=1.0)
    return grid.permute(1, 2, 0).numpy()  # (H', W', 3)


def show_images(x: torch.Tensor, nrow: int = 8, title: str | None = None, ax=None, scale: float = 0.5):
    """Show images x (B, C, H, W) in [-1, 1] as a grid; returns the matplotlib Axes."""
    grid = image_grid(x, nrow)
    if ax is None:
        _, ax = plt.subplots(figsize=(scale * grid.shape[1] / 16, scale * grid.shape[0] / 16))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def moving_average(values, window: int) -> np.ndarray:
    """Mean over the last ``window`` values at each point (fewer at the start); same length as ``values``."""
    values = np.asarray(values, dtype=np.float64)
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (cumsum[1:] - cumsum[np.arange(1, len(values) + 1) - counts]) / counts


def plot_loss(losses, title: str = "training loss", window: int = 50, ax=None, log: bool = True):
    """The per-step loss (faint) and its moving average over ``window`` steps; returns the Axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    ax.plot(losses, alpha=0.3, lw=0.8, label="per step")
    ax.plot(moving_average(losses, window), lw=1.5, label=f"mean of last {window}")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    return ax


def _png_base64(image) -> str:
    """A figure, or an image array (H, W) / (H, W, 3) in [0, 1], as a base64 PNG."""
    buffer = io.BytesIO()
    if isinstance(image, plt.Figure):
        image.savefig(buffer, format="png", bbox_inches="tight", dpi=80)
        plt.close(image)
    else:
        image = np.clip(np.asarray(image, dtype=np.float64), 0, 1)
        zoom = max(1, 384 // max(image.shape[:2]))  # small images: enlarge, pixels as squares
        image = image.repeat(zoom, axis=0).repeat(zoom, axis=1)
        plt.imsave(buffer, image, format="png", cmap="gray", vmin=0, vmax=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def static_slider_html(fn: Callable, **values: Sequence) -> str:
    """Pre-render ``fn`` at every combination of slider values into one self-contained HTML player.

    The page needs no kernel and no network: the frames are embedded PNGs, and a few lines of JavaScript show
    the frame that matches the sliders' positions.

    Args:
        fn: a pure function of the keyword arguments named in ``values``, returning a matplotlib Figure or an
            image array (H, W) or (H, W, 3) in [0, 1].
        values: for each slider, the sequence of values it steps through.

    Returns:
        an HTML string with one ``<input type="range">`` per slider and one ``<img>``.
    """
    if not values or any(len(v) == 0 for v in values.values()):
        raise ValueError("give each slider a non-empty sequence of values, e.g. t=[0, 500, 999]")
    names = list(values)
    frames = {"_".join(map(str, index)): _png_base64(fn(**{n: values[n][i] for n, i in zip(names, index)}))
              for index in itertools.product(*(range(len(values[n])) for n in names))}
    uid = f"ldm-slider-{uuid.uuid4().hex[:8]}"
    controls = "".join(
        f'<label style="display:block">{name} = <span id="{uid}-{name}-value">{values[name][0]}</span><br>'
        f'<input type="range" id="{uid}-{name}" data-slider="{name}" min="0" max="{len(values[name]) - 1}" '
        f'value="0" step="1" style="width:20em"></label>' for name in names)
    return f"""<div class="ldm-slider" id="{uid}">{controls}<img id="{uid}-image" alt="frame"
src="data:image/png;base64,{frames['_'.join('0' * len(names))]}">
<script>(function() {{
  const frames = {json.dumps(frames)};
  const labels = {json.dumps({n: [str(v) for v in values[n]] for n in names})};
  const names = {json.dumps(names)};
  function show() {{
    const index = names.map(n => document.getElementById("{uid}-" + n).value);
    names.forEach((n, i) => document.getElementById("{uid}-" + n + "-value").textContent = labels[n][index[i]]);
    document.getElementById("{uid}-image").src = "data:image/png;base64," + frames[index.join("_")];
  }}
  names.forEach(n => document.getElementById("{uid}-" + n).addEventListener("input", show));
}})();</script></div>"""


# (fn, values) of every slider made in this process, live or pre-rendered: what a reader moves in Jupyter
LIVE_SLIDERS: list[tuple[Callable, dict]] = []


def exercise_live_sliders() -> int:
    """Call every slider's function made so far at its sliders' minimum, middle and maximum values (all sliders
    at once), as a reader who moves them live after running the whole chapter would: a callback that reads a
    global the chapter has since rebound raises here, in a live kernel and in the HTML build alike (whose
    pre-rendered frames were drawn before the rebinding). Returns the number of calls made."""
    calls = 0
    for fn, values in LIVE_SLIDERS:
        for pick in (lambda v: v[0], lambda v: v[len(v) // 2], lambda v: v[-1]):
            result = fn(**{name: pick(v) for name, v in values.items()})
            if isinstance(result, plt.Figure):
                plt.close(result)
            calls += 1
    return calls


def show_source(obj) -> "IPython.display.Markdown":
    """The source of a package function, class or method, as a Python code block for a notebook: how a chapter
    shows the code it teaches (from the package itself, never a pasted copy that could drift)."""
    from IPython.display import Markdown

    source = textwrap.dedent(inspect.getsource(obj)).rstrip()
    module = inspect.getmodule(obj).__name__
    return Markdown(f"`{module}.{obj.__qualname__}`:\n\n```python\n{source}\n```")


def slider(fn: Callable, **values: Sequence):
    """Sliders over a pure function of their values that returns a figure or an image.

    In a live kernel (Jupyter, Colab) these are ipywidgets that call ``fn`` as they move. When the book is built
    to HTML (``LDM_STATIC_HTML=1``, set by ``make book``) every frame is pre-rendered into a self-contained
    JavaScript player (:func:`static_slider_html`), so dragging still changes the picture with no kernel and no
    network. Either way the frames come from the same ``fn``, kept in :data:`LIVE_SLIDERS` for
    :func:`exercise_live_sliders`.

    Args:
        fn: ``fn(**slider_values)`` returning a matplotlib Figure or an image array in [0, 1].
        values: for each slider, the sequence of values it steps through.

    Returns:
        the displayable object (an ``IPython.display.HTML`` or an ``ipywidgets`` widget).
    """
    LIVE_SLIDERS.append((fn, {name: list(v) for name, v in values.items()}))
    if os.environ.get("LDM_STATIC_HTML"):
        from IPython.display import HTML

        return HTML(static_slider_html(fn, **values))
    import ipywidgets

    def show(**kwargs):
        result = fn(**kwargs)
        if not isinstance(result, plt.Figure):
            figure, ax = plt.subplots(figsize=(3, 3))
            ax.imshow(np.clip(np.asarray(result), 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_axis_off()
        plt.show()

    sliders = {name: ipywidgets.SelectionSlider(options=list(v), description=name, continuous_update=False)
               for name, v in values.items()}
    return ipywidgets.interactive(show, **sliders)
