import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from ldm_core.viz import image_grid, moving_average, slider, static_slider_html


def test_image_grid_maps_to_unit_range():
    grid = image_grid(torch.full((4, 1, 8, 8), -1.0), nrow=2, padding=0)
    assert grid.shape == (16, 16, 3) and grid.max() == 0.0


def test_moving_average_closed_form():
    np.testing.assert_allclose(moving_average([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])


def frame(a, b):
    """A pure function of two slider values: a gray level a / 10 with a bright row b."""
    image = np.full((4, 4), a / 10)
    image[b] = 1.0
    return image


def test_static_slider_embeds_every_frame_and_one_range_per_slider():
    html = static_slider_html(frame, a=[0, 5, 10], b=[0, 3])
    assert html.count('type="range"') == 2
    assert 'max="2"' in html and 'max="1"' in html
    frames = re.search(r"const frames = (\{.*?\});", html).group(1)
    assert frames.count('":') == 6, "3 x 2 pre-rendered frames"
    assert "http" not in html, "no network needed"


def test_static_slider_frames_differ_where_the_function_differs():
    html = static_slider_html(frame, a=[0, 10], b=[0])
    pngs = re.findall(r'"(\d_\d)": "([A-Za-z0-9+/=]+)"', html)
    assert len(pngs) == 2 and pngs[0][1] != pngs[1][1]


def test_slider_is_a_widget_live_and_html_when_static(monkeypatch):
    monkeypatch.delenv("LDM_STATIC_HTML", raising=False)
    live = slider(frame, a=[0, 5], b=[1])
    assert live.__class__.__name__ == "interactive" and len(live.children) >= 2
    plt.close("all")
    monkeypatch.setenv("LDM_STATIC_HTML", "1")
    assert "<input" in slider(frame, a=[0, 5], b=[1]).data
    with pytest.raises(ValueError, match="non-empty"):
        static_slider_html(frame, a=[])
