"""A self-contained HTML twin of REPORT.md: PNGs inlined as data URIs, no CDN, no scripts."""

from __future__ import annotations

import base64
import re
from pathlib import Path

CSS = """body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:48%;margin:4px}
code{background:#f3f3f3;padding:0 3px}"""


def _inline_images(html: str, base: Path) -> str:
    def repl(m: re.Match) -> str:
        path = base / m.group(1)
        if not path.is_file():
            return m.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    return re.sub(r'src="([^":]+\.png)"', repl, html)


def markdown_to_html(markdown: str, base: Path, title: str) -> str:
    from markdown_it import MarkdownIt  # rich's Markdown parser; tables are a core plugin

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{CSS}</style></head><body>\n{_inline_images(body, base)}</body></html>\n")
