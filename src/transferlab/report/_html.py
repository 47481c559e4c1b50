"""The self-contained HTML page (images embedded, opens offline) and its tables."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "domain_summary",
    "html_table",
    "per_class_table",
    "per_label_table",
    "thumbnail_html",
    "thumbnail_row",
    "write_html_report",
]


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0} td,th{padding:.25em .7em;border-bottom:1px solid #eee;text-align:left}
th{background:#f6f6f6} .num{text-align:right;font-variant-numeric:tabular-nums}
.big{font-size:2em;font-weight:600} .muted{color:#666} img{max-width:100%;height:auto}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5em 1em}
code{background:#f3f3f3;padding:0 .3em}
.thumbs{display:flex;flex-wrap:wrap;gap:.5em;margin:.4em 0 1em}
.thumb{margin:0;border:3px solid #ddd;padding:3px;width:124px;font-size:12px;line-height:1.25}
.thumb img{display:block;margin:auto;max-height:112px}
.thumb figcaption{overflow-wrap:anywhere;margin-top:.2em}
.missing{width:112px;height:80px;background:#eee;color:#888;display:flex;align-items:center;justify-content:center}
"""


def write_html_report(
    path: str | os.PathLike[str],
    *,
    title: str,
    summary: dict[str, Any],
    sections: Sequence[tuple[str, str]] = (),
    images: Sequence[tuple[str, str | os.PathLike[str]]] = (),
) -> Path:
    """Write one self-contained HTML page: key figures first, then tables, then plots.

    Args:
        path: the .html file to write.
        title: page heading.
        summary: label -> value shown as the headline table (first value large).
        sections: (heading, trusted HTML) blocks, in order.
        images: (caption, PNG path) pairs embedded as data URIs.
    """
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
    ]
    parts.append(
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{_CSS}</style></head><body>"
    )
    parts.append(f"<h1>{html.escape(title)}</h1>")
    items = list(summary.items())
    if items:
        k0, v0 = items[0]
        parts.append(
            f"<p><span class='big'>{html.escape(_fmt(v0))}</span> <span class='muted'>{html.escape(k0)}</span></p>"
        )
        parts.append(
            "<table>"
            + "".join(
                f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>"
                for k, v in items[1:]
            )
            + "</table>"
        )
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    for caption, img in images:
        parts.append(f"<h2>{html.escape(caption)}</h2>{_img_tag(Path(img), caption)}")
    parts.append("</body></html>")
    out = Path(path)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A small HTML table; numbers right-aligned, everything escaped."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='num'>{html.escape(_fmt(c))}</td>"
            if isinstance(c, (int, float))
            else f"<td>{html.escape(str(c))}</td>"
            for c in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def per_class_table(per_class: Mapping[str, Mapping[str, float]]) -> str:
    """Precision, recall, F1 and support per class (every single-label page shows it)."""
    return html_table(
        ["class", "precision", "recall", "f1", "support"],
        [[c, v["precision"], v["recall"], v["f1"], v["support"]] for c, v in per_class.items()],
    )


def per_label_table(per_label: Mapping[str, Mapping[str, float]]) -> str:
    """AP, precision, recall, F1, tuned threshold and support per label (multi-label pages)."""
    cols = ["average_precision", "precision", "recall", "f1", "threshold", "support"]
    return html_table(
        ["label", "AP", "precision", "recall", "f1", "threshold", "support"],
        [[c, *(v[k] for k in cols)] for c, v in per_label.items()],
    )


def thumbnail_html(path: str, caption: str, *, side: int = 112, colour: str = "#ddd") -> str:
    """One image file as a small embedded JPEG with a caption under it (a figure that can sit in
    a row of others); a box saying so when the file cannot be read."""
    import io

    from transferlab.data import load_image

    cap = html.escape(caption).replace("\n", "<br>")
    title = html.escape(path)
    try:
        img = load_image(path, draft_size=side)
        img.thumbnail((side, side))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        data = base64.b64encode(buf.getvalue()).decode()
        pic = f"<img alt='{title}' title='{title}' src='data:image/jpeg;base64,{data}'>"
    except Exception:  # a file gone since the run read it: the caption still says which
        pic = f"<div class='missing' title='{title}'>cannot read</div>"
    return (
        f"<figure class='thumb' style='border-color:{colour}'>{pic}"
        f"<figcaption>{cap}</figcaption></figure>"
    )


def thumbnail_row(cells: Sequence[str]) -> str:
    """`thumbnail_html` figures side by side."""
    return f"<div class='thumbs'>{''.join(cells)}</div>"


def domain_summary(m: Mapping[str, Any]) -> dict[str, Any]:
    """The summary rows of a ``--target``/``--remedy`` run (metrics ``domain``): the remedy
    and why, the plain model's figure on the same validation images, and which images the
    remedy learnt from (inductive or transductive); none without it."""
    d = m.get("domain")
    if not d:
        return {"advice": m["remedy_advice"]} if m.get("remedy_advice") else {}
    rows: dict[str, Any] = {"domain remedy": f"{d['remedy']} ({d['chosen_by']})"}
    if d.get("plain_val_accuracy") is not None:
        rows["validation accuracy without the remedy"] = d["plain_val_accuracy"]
    rows["images the remedy used"] = d["images_used"]
    return rows
