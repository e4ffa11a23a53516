"""The results registry: what each chapter measured, as JSON lines.

Each chapter calls ``record(...)`` after it evaluates a model. Lines go to
``$GENLIB_RESULTS`` (default: ``results/`` in the book's folder when run from it,
else ``$GENLIB_CACHE/results``), one file per chapter. Recording the same chapter,
model and profile again replaces the earlier line, so re-running a chapter never
duplicates rows. ``table`` compiles them; a run that never happened shows as missing.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path

from genlib import profiles


def results_dir() -> Path:
    if os.environ.get("GENLIB_RESULTS"):
        path = Path(os.environ["GENLIB_RESULTS"])
    else:
        here = Path.cwd()
        book_root = next((p for p in (here, *here.parents) if (p / "_toc.yml").exists()), None)
        if book_root is not None:
            path = book_root / "results"
        else:
            from genlib.profiles import cache_dir

            path = cache_dir() / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _clean_metrics(metrics: dict) -> dict:
    out = {}
    for key, value in metrics.items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"metric {key!r} must be a number, got {value!r}.") from None
        if not math.isfinite(value):
            raise ValueError(f"metric {key!r} is {value}; record only measured, finite numbers.")
        out[key] = value
    return out


def record(chapter: str, model: str, metrics: dict, *, params: int | None = None,
           train_seconds: float | None = None, sample_seconds_per_image: float | None = None,
           profile: str | None = None, config: dict | None = None) -> dict:
    """Record one model's measurements and return the stored entry.

    Args:
        chapter: the notebook stem, e.g. ``"01_intro"``.
        model: a short model name, e.g. ``"gaussian baseline"``.
        metrics: name -> number (``fid``, ``kid``, ``bits_per_dim``, ...).
        params: trainable parameter count.
        train_seconds: wall-clock training time.
        sample_seconds_per_image: wall-clock generation time per image.
        profile: defaults to the active profile.
        config: the settings that produced it (epochs, sizes, ...), JSON-serialisable.
    """
    import keras

    if not chapter or not model:
        raise ValueError("chapter and model must be non-empty strings.")
    entry = {
        "chapter": chapter,
        "model": model,
        "profile": profile or profiles.active(),
        "metrics": _clean_metrics(metrics),
        "params": None if params is None else int(params),
        "train_seconds": None if train_seconds is None else round(float(train_seconds), 2),
        "sample_seconds_per_image": None if sample_seconds_per_image is None else float(sample_seconds_per_image),
        "config": config or {},
        "backend": keras.backend.backend(),
        "device": "GPU" if profiles.gpu_available() else "CPU",
        "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    json.dumps(entry)  # fail now, not at read time, on a config that is not JSON
    path = results_dir() / f"{chapter}.jsonl"
    kept = [e for e in load(path=path) if (e["model"], e["profile"]) != (model, entry["profile"])]
    path.write_text("".join(json.dumps(e) + "\n" for e in [*kept, entry]))
    return entry


def load(profile: str | None = None, path: Path | None = None) -> list[dict]:
    """All recorded entries (optionally of one profile), from one file or the whole folder."""
    files = [path] if path is not None else sorted(results_dir().glob("*.jsonl"))
    entries = []
    for f in files:
        if f.exists():
            entries += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return [e for e in entries if profile is None or e["profile"] == profile]


class MarkdownText(str):
    """A string that Jupyter (and the built book) displays as Markdown: leave it as a cell's last value.

    ``print``-ing a Markdown table shows its raw pipes; returning it renders a table.
    """

    def _repr_markdown_(self):
        return str(self)


def markdown_table(header, rows, caption: str | None = None) -> MarkdownText:
    """A Markdown table from a header (names) and rows (sequences of cells, already formatted).

    Example: ``markdown_table(["model", "FID"], [["VAE", "41.0"], ["GAN", "12.3"]])``.
    """
    header = [str(h) for h in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        row = ["–" if c is None else str(c) for c in row]
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells for {len(header)} columns: {row}")
        lines.append("| " + " | ".join(row) + " |")
    text = "\n".join(lines)
    return MarkdownText(f"{caption}\n\n{text}" if caption else text)


def table(profile: str, expected: list[tuple[str, str]] | None = None,
          columns=("bits_per_dim", "fid", "kid", "precision", "recall"), chapters=None) -> MarkdownText:
    """A Markdown table of one profile's results (displayed as a table when it is a cell's value).

    ``expected`` lists ``(chapter, model)`` pairs that should be there; those never
    recorded appear as rows marked *missing* rather than vanishing. ``chapters`` (a name
    or a list of names) keeps only those chapters' rows; None keeps every chapter.
    """
    keep = [chapters] if isinstance(chapters, str) else chapters
    entries = {(e["chapter"], e["model"]): e for e in load(profile) if keep is None or e["chapter"] in keep}
    rows = list(entries) + [key for key in (expected or []) if key not in entries]
    body = []
    for key in rows:
        e = entries.get(key)
        if e is None:
            body.append([key[0], key[1], *("missing" for _ in columns), "missing"])
            continue
        cells = [f"{e['metrics'][c]:.4g}" if c in e["metrics"] else "–" for c in columns]
        train = "–" if e["train_seconds"] is None else f"{e['train_seconds']:.0f}"
        body.append([key[0], key[1], *cells, train])
    return markdown_table(["chapter", "model", *columns, "train s"], body)


# ---------------------------------------------------------------------------
# The published registry: the book's own run, shipped with the site.

PUBLISHED_URL = "https://gdl-hands-on.github.io/generative-deep-learning/results/registry.json"


def publish(folder, commit: str = "unknown") -> Path:
    """Write every recorded entry, with the build's date and commit, to ``folder/registry.json``.

    The publishing workflow runs this after the book build, so the site carries the numbers its
    pages show; ``published()`` reads them back on a reader's machine.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "entries": load()}
    path = folder / "registry.json"
    path.write_text(json.dumps(payload, indent=1))
    return path


def published(source: str | None = None, timeout: float = 10.0) -> dict | None:
    """The published build's registry (``{"commit", "date", "entries"}``), or None when unreachable.

    ``source``: a URL or a local path; default ``$GENLIB_PUBLISHED_RESULTS``, else the site's
    copy. Offline (CI, a plane) this returns None instead of failing: the comparison page then
    shows the reader's own numbers only and says so.
    """
    source = source or os.environ.get("GENLIB_PUBLISHED_RESULTS") or PUBLISHED_URL
    try:
        if "://" in source:
            import urllib.request

            with urllib.request.urlopen(source, timeout=timeout) as response:  # noqa: S310 (a fixed https URL)
                payload = json.loads(response.read().decode())
        else:
            payload = json.loads(Path(source).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("entries"), list):
        return None
    return payload


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Ship the results registry with the built book.")
    parser.add_argument("--publish", required=True, help="folder to write registry.json into")
    parser.add_argument("--commit", default="unknown")
    args = parser.parse_args()
    print(publish(args.publish, args.commit))
