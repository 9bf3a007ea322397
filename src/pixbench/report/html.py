"""A self-contained HTML twin of REPORT.md: PNGs inlined as data URIs, no CDN, no scripts.

Text in the report comes from params and metrics files (profile names, dataset names, paths):
raw HTML in the Markdown is shown as text, never passed through, and only PNGs below the
report's directory are inlined."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from pixbench.errors import UserError
from pixbench.runio import under_root

CSS = """body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:48%;margin:4px}
code{background:#f3f3f3;padding:0 3px}"""


def _inline_images(page: str, base: Path) -> str:
    def repl(m: re.Match) -> str:
        try:
            path = under_root(base / html.unescape(m.group(1)), base)
        except UserError:
            return m.group(0)  # not ours to read: left as a (broken) relative link
        if not path.is_file():
            return m.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    return re.sub(r'src="([^":]+\.png)"', repl, page)


def escape(text) -> str:
    """Text from params/metrics as HTML text (what the Markdown renderer does to raw HTML)."""
    return html.escape(str(text), quote=True)


def markdown_to_html(markdown: str, base: Path, title: str) -> str:
    from markdown_it import MarkdownIt  # rich's Markdown parser; tables are a core plugin

    # html=False: a `<script>` in a metrics field is escaped, not emitted; markdown-it also
    # refuses javascript:/vbscript:/file: links.
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n{_inline_images(body, base)}</body></html>\n")
