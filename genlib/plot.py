"""Figures every chapter draws: image grids, training curves, latent scatters, attention maps.

Each function returns the ``matplotlib`` figure, so a notebook shows it and a
script can save it (``fig.savefig("grid.png")``).
"""

from __future__ import annotations

import numpy as np


def _as_displayable(images, value_range=None) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"expected images (N, H, W), (N, H, W, 1) or (N, H, W, 3), got shape {x.shape}.")
    if isinstance(value_range, str):
        if value_range != "each":
            raise ValueError(f"value_range must be a (low, high) pair, None or 'each', got {value_range!r}.")
        x = x.astype("float32")
        low = x.min(axis=(1, 2, 3), keepdims=True)
        span = np.maximum(x.max(axis=(1, 2, 3), keepdims=True) - low, 1e-12)
        return (x - low) / span
    if np.issubdtype(x.dtype, np.integer) and value_range is None:
        value_range = (0, 255) if x.max() > 1 else (0, 1)
    x = x.astype("float32")
    if value_range is None:
        value_range = (-1.0, 1.0) if x.min() < 0 else (0.0, 1.0)
    low, high = value_range
    return np.clip((x - low) / (high - low), 0.0, 1.0)


def image_grid(images, ncols: int | None = None, titles=None, value_range=None,
               cell_size: float = 1.0, suptitle: str | None = None, row_labels=None):
    """Show images in a grid.

    Args:
        images: (N, H, W), (N, H, W, 1) or (N, H, W, 3); uint8 or floats.
        ncols: images per row (default: about square).
        titles: optional list of N short strings, one above each image.
        value_range: the images' range, e.g. (0, 1), (-1, 1), (0, 255) or (0, levels - 1);
            inferred when None (negative values mean [-1, 1]); ``"each"`` stretches every
            image to its own min..max (for filters, principal components, differences).
        cell_size: inches per image.
        suptitle: a title over the whole grid.
        row_labels: optional labels written left of each row.
    """
    import matplotlib.pyplot as plt

    x = _as_displayable(images, value_range)
    n = len(x)
    if n == 0:
        raise ValueError("no images to show.")
    if titles is not None and len(titles) != n:
        raise ValueError(f"{n} images but {len(titles)} titles.")
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    if row_labels is not None and len(row_labels) > nrows:
        raise ValueError(f"{nrows} rows but {len(row_labels)} row labels.")
    # One mosaic in one Axes: drawing it costs the same for 16 images or 400, where a
    # subplot per image takes seconds per hundred.
    h, w, c = x.shape[1:]
    gap = max(1, h // 14)
    band = int(round(0.3 * h)) if titles is not None else 0  # room for the titles above each row
    pitch_y, pitch_x = h + gap + band, w + gap
    canvas = np.ones((nrows * pitch_y - gap, ncols * pitch_x - gap, c), dtype="float32")
    for i in range(n):
        r, col = divmod(i, ncols)
        canvas[r * pitch_y + band: r * pitch_y + band + h, col * pitch_x: col * pitch_x + w] = x[i]
    fig, ax = plt.subplots(figsize=(ncols * cell_size, nrows * cell_size * (1.25 if titles else 1)))
    ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if titles is not None:
        for i, title in enumerate(titles):
            r, col = divmod(i, ncols)
            ax.text(col * pitch_x + (w - 1) / 2, r * pitch_y + band - 1, str(title), fontsize=8,
                    ha="center", va="bottom")
    if row_labels is not None:
        for r, label in enumerate(row_labels):
            ax.text(-gap - 1, r * pitch_y + band + (h - 1) / 2, str(label), fontsize=8, ha="right", va="center")
    if suptitle:
        fig.suptitle(suptitle)  # before tight_layout, which then leaves room for it
    fig.tight_layout(pad=0.2)
    return fig


def training_curves(history, keys=None, title: str | None = None, logy: bool = False):
    """Plot metrics from a Keras ``History`` (or its ``.history`` dict), one panel per metric.

    ``val_`` curves are drawn in the same panel as their training curve.
    """
    import matplotlib.pyplot as plt

    hist = getattr(history, "history", history)
    if not isinstance(hist, dict) or not hist:
        raise ValueError("expected a keras History or a non-empty dict of metric lists.")
    keys = keys or [k for k in hist if not k.startswith("val_")]
    missing = [k for k in keys if k not in hist]
    if missing:
        raise ValueError(f"metrics {missing} not in the history; it has {sorted(hist)}.")
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        epochs = np.arange(1, len(hist[key]) + 1)
        ax.plot(epochs, hist[key], marker="o", ms=3, label="train")
        if f"val_{key}" in hist:
            ax.plot(epochs, hist[f"val_{key}"], marker="o", ms=3, label="validation")
            ax.legend(fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def latent_scatter(z, labels=None, class_names=None, title: str | None = None, max_points: int = 5000):
    """Scatter 2-D codes ``z`` (N, 2), coloured by integer ``labels`` with a legend of ``class_names``."""
    import matplotlib.pyplot as plt

    z = np.asarray(z)
    if z.ndim != 2 or z.shape[1] != 2:
        raise ValueError(f"latent_scatter needs (N, 2) codes, got shape {z.shape}; project them first.")
    if labels is not None and len(labels) != len(z):
        raise ValueError(f"{len(z)} codes but {len(labels)} labels.")
    z, labels = z[:max_points], None if labels is None else np.asarray(labels)[:max_points]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=3, alpha=0.6)
    else:
        cmap = plt.get_cmap("tab10")
        for c in np.unique(labels):
            name = class_names[c] if class_names is not None else str(c)
            sel = labels == c
            ax.scatter(z[sel, 0], z[sel, 1], s=3, alpha=0.6, color=cmap(int(c) % 10), label=name)
        ax.legend(markerscale=4, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def attention_map(weights, tokens=None, titles=None, ncols: int = 2, cell_size: float = 5.0):
    """Draw attention weights as heat maps, one panel per head.

    Args:
        weights: (T, T) for one head or (H, T, T) for H heads; row t holds the weights query
            position t gives to every key position (each row sums to 1).
        tokens: optional T strings labelling the positions (spaces and line breaks are shown
            as ``␣`` and ``↵``).
        titles: optional H panel titles (default "head 1", "head 2", ...).
        ncols: panels per row.
        cell_size: inches per panel.
    """
    import matplotlib.pyplot as plt

    w = np.asarray(weights, dtype="float32")
    w = w[None] if w.ndim == 2 else w
    if w.ndim != 3 or w.shape[1] != w.shape[2]:
        raise ValueError(f"expected weights (T, T) or (H, T, T), got shape {np.shape(weights)}.")
    heads, length = w.shape[0], w.shape[1]
    if tokens is not None and len(tokens) != length:
        raise ValueError(f"{length} positions but {len(tokens)} tokens.")
    if titles is not None and len(titles) != heads:
        raise ValueError(f"{heads} heads but {len(titles)} titles.")
    labels = None if tokens is None else [{"\n": "↵", " ": "␣"}.get(t, t) for t in tokens]
    ncols = min(ncols, heads)
    nrows = int(np.ceil(heads / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell_size * ncols, cell_size * nrows), squeeze=False)
    for head, ax in enumerate(axes.flat):
        if head >= heads:
            ax.axis("off")
            continue
        ax.imshow(w[head], cmap="Blues", vmin=0, vmax=1)
        if labels is not None:
            ax.set_xticks(range(length), labels, fontsize=7, family="monospace")
            ax.set_yticks(range(length), labels, fontsize=7, family="monospace")
        ax.set_title(titles[head] if titles is not None else f"head {head + 1}", fontsize=10)
        ax.set_xlabel("key position (attends to)")
        ax.set_ylabel("query position")
    fig.tight_layout()
    return fig


def piano_roll(pieces, titles=None, steps_per_beat: int = 4, bar_steps: int | None = None, downbeat: int = 0,
               max_steps: int | None = None, voice_names=("soprano", "alto", "tenor", "bass"),
               ncols: int = 1, width: float = 10.0, height: float = 2.4):
    """Draw note lists as piano rolls, one panel per piece: a horizontal bar per note, a colour per voice.

    Args:
        pieces: a note list or a list of them. A note list is an int array (N, 4) with columns
            voice, start, duration (in steps) and MIDI pitch, as ``genlib.music`` makes them.
        titles: optional panel titles.
        steps_per_beat: steps per quarter note (the x axis counts beats).
        bar_steps: draw a bar line every ``bar_steps`` steps, the first at ``downbeat``.
        max_steps: show only the first ``max_steps`` steps.
        voice_names: legend labels, by voice index.
        ncols: panels per row; width, height: inches per panel.
    """
    import matplotlib.pyplot as plt

    first = np.asarray(pieces[0] if len(pieces) else pieces)
    pieces = [np.asarray(pieces)] if first.ndim == 1 else [np.asarray(p) for p in pieces]
    for p in pieces:
        if p.ndim != 2 or p.shape[1] != 4:
            raise ValueError(f"a note list must be (N, 4): voice, start, duration, pitch; got shape {p.shape}.")
    if titles is not None and len(titles) != len(pieces):
        raise ValueError(f"{len(pieces)} pieces but {len(titles)} titles.")
    ncols = min(ncols, len(pieces))
    nrows = int(np.ceil(len(pieces) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    legend = {}
    for i, ax in enumerate(axes.flat):
        if i >= len(pieces):
            ax.axis("off")
            continue
        notes = pieces[i]
        end = int((notes[:, 1] + notes[:, 2]).max()) if len(notes) else 1
        end = min(end, max_steps) if max_steps else end
        for v in np.unique(notes[:, 0]):
            mine = notes[(notes[:, 0] == v) & (notes[:, 1] < end)]
            lengths = np.minimum(mine[:, 2], end - mine[:, 1])
            bars = ax.barh(mine[:, 3], lengths / steps_per_beat, left=mine[:, 1] / steps_per_beat, height=0.8,
                           color=colors[int(v) % len(colors)], edgecolor="black", linewidth=0.3)
            legend.setdefault(int(v), bars)
        if bar_steps:
            for x in range(downbeat, end + 1, bar_steps):
                ax.axvline(x / steps_per_beat, color="grey", linewidth=0.5, zorder=0)
        if len(notes):
            low, high = int(notes[:, 3].min()), int(notes[:, 3].max())
            cs = [p for p in range(low - low % 12, high + 1, 12) if low - 1 <= p <= high + 1]
            ax.set_yticks(cs, [f"C{p // 12 - 1}" for p in cs])
            ax.set_ylim(low - 1.5, high + 1.5)
        ax.set_xlim(0, end / steps_per_beat)
        ax.set_xlabel("beats")
        if titles is not None:
            ax.set_title(titles[i], fontsize=10)
    names = [voice_names[v] if v < len(voice_names) else f"voice {v}" for v in sorted(legend)]
    fig.legend([legend[v] for v in sorted(legend)], names, loc="outside right upper", fontsize=8)
    return fig
