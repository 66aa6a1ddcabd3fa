"""The report as data (sections of paragraphs, tables and figures), rendered to Markdown and to one
self-contained HTML page (figures inlined as data: URIs, so the page can be mailed or attached).

Every number a table shows comes through `Numbers.cite`, which keeps where it was read (file and key
path) in report.json: the test reads each back from its file, so no figure in the report is typed by
hand or drifts from its source.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    file: str  # a PNG under the report's figures/ directory
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[str | Table | Figure] = field(default_factory=list)  # a str is a paragraph (Markdown inline)
    missing: str | None = None  # the one line shown instead, when its artifacts are absent


@dataclass
class Numbers:
    """The provenance of every number shown: (section, label, value, file, key path)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    section: str = ""

    def cite(self, value: float | int, source: Path, keys: tuple[str | int, ...], label: str,
             fmt: str = "{:.3f}") -> str:
        self.records.append({"section": self.section, "label": label, "value": value, "file": str(source),
                             "keys": list(keys), "shown": fmt.format(value)})
        return fmt.format(value)


def dig(data: Any, keys: tuple[str | int, ...] | list[str | int]) -> Any:
    for key in keys:
        data = data[key]
    return data


# --- Markdown ---------------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, intro: list[str], sections: list[Section]) -> str:
    lines = [f"# {title}", "", *(p + "\n" for p in intro)]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.missing:
            lines += [f"*Missing: {s.missing}*", ""]
            continue
        for block in s.blocks:
            if isinstance(block, Table):
                lines.append("| " + " | ".join(map(_md_cell, block.header)) + " |")
                lines.append("|" + "---|" * len(block.header))
                lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows]
            elif isinstance(block, Figure):
                lines.append(f"![{block.caption}](figures/{block.file})")
                lines.append(f"*{block.caption}*")
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# --- HTML --------------------------------------------------------------------------------------
STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 64rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 { font-size: 1.8rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td { font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; } .missing { color: #a33; font-style: italic; }
code { background: #f5f5f5; padding: 0 .2rem; }
"""


def _inline(text: str) -> str:
    """Escaped text with Markdown's `code` and **bold** spans: all the inline markup the sections use."""
    out, parts = [], html.escape(text).split("`")
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{part}</code>")
        else:
            bold = part.split("**")
            out.append("".join(f"<b>{b}</b>" if j % 2 else b for j, b in enumerate(bold)))
    return "".join(out)


def to_html(title: str, intro: list[str], sections: list[Section], figures: Path) -> str:
    body = [f"<h1>{html.escape(title)}</h1>", *(f"<p>{_inline(p)}</p>" for p in intro)]
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.missing:
            body.append(f'<p class="missing">Missing: {_inline(s.missing)}</p>')
            continue
        for block in s.blocks:
            if isinstance(block, Table):
                head = "".join(f"<th>{_inline(h)}</th>" for h in block.header)
                rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in block.rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif isinstance(block, Figure):
                data = base64.b64encode((figures / block.file).read_bytes()).decode()
                body.append(f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{_inline(block.caption)}</figcaption></figure>")
            else:
                body.append(f"<p>{_inline(block)}</p>")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
