"""A report as a list of blocks, rendered both as markdown and as one self-contained HTML file
(inline CSS, images as base64 data URIs, no scripts, no network).

Every block holds plain text, names from ``sweep.json`` included: each renderer escapes it
(:func:`html.escape`, :func:`~hdsu_ray.report.common.md_text`), so a label such as ``*x*`` or
``<b>`` reads as written in both files.
"""

from __future__ import annotations

import base64
import html
import re

from hdsu_ray.report.common import md_table, md_text


class Doc:
    """Blocks rendered both as markdown and as self-contained HTML."""

    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def ul(self, items: list[str]):
        self.blocks.append(("ul", items))

    def table(self, headers: list[str], rows: list[list[str]]):
        self.blocks.append(("table", headers, rows))

    def img(self, name: str, alt: str):
        self.blocks.append(("img", name, alt))

    def pre(self, text: str):
        self.blocks.append(("pre", text))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out += ["#" * b[1] + " " + md_text(b[2]), ""]
            elif b[0] == "p":
                out += [md_text(b[1], start=True), ""]
            elif b[0] == "ul":
                out += [f"- {md_text(i, start=True)}" for i in b[1]] + [""]
            elif b[0] == "table":
                out += md_table([md_text(h) for h in b[1]], [[md_text(c) for c in r] for r in b[2]]) + [""]
            elif b[0] == "img":
                out += [f"![{md_text(b[2])}]({b[1]})", ""]
            elif b[0] == "pre":
                out += _fenced(b[1]) + [""]
        return "\n".join(out)

    def html(self, title: str, images: dict[str, bytes]) -> str:
        e = html.escape
        body = []
        for b in self.blocks:
            if b[0] == "h":
                body.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                body.append(f"<p>{e(b[1])}</p>")
            elif b[0] == "ul":
                body.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b[1]) + "</ul>")
            elif b[0] == "table":
                head = "".join(f"<th>{e(h)}</th>" for h in b[1])
                rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[2])
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif b[0] == "img":
                data = base64.b64encode(images[b[1]]).decode("ascii")
                body.append(f'<figure><img alt="{e(b[2])}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{e(b[2])} ({e(b[1])})</figcaption></figure>")
            elif b[0] == "pre":
                body.append(f"<pre>{e(b[1])}</pre>")
        css = ("body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;"
               "padding:0 1em;color:#222;line-height:1.45}h1{border-bottom:2px solid #c0392b;padding-bottom:.2em}"
               "table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}"
               "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
               "th{background:#f3f4f6}td:first-child,th:first-child{text-align:left}"
               "tbody tr:nth-child(even){background:#fafafa}img{max-width:100%;border:1px solid #eee}"
               "figure{margin:1em 0}figcaption{font-size:.85em;color:#666}"
               "pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:.85em}")
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
                f"<style>{css}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _fenced(text: str) -> list[str]:
    """A YAML code block whose fence is longer than any backtick run inside it (which would close it)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + "yaml", text.rstrip("\n"), fence]
