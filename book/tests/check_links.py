#!/usr/bin/env python3
"""Static checks of the book, run by scripts/test-book.sh (standard library only).

1. Sources: every `{{#include …}}` names a file that exists and, when it names an anchor, an anchor
   that exists with content (mdBook itself includes nothing, silently, for a missing anchor); no
   other `{{#…}}` directive; every page is in SUMMARY.md.
2. The built site: every internal link (`href`/`src` of a, link, script, img) points at a file that
   exists, and every `#fragment` at an id on the target page.

Usage: check_links.py BOOK_DIR SITE_DIR. Prints what it checked; exits 1 listing every problem.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

INCLUDE = re.compile(r"(\\?)\{\{#(\w+)\s+([^}]*?)\s*\}\}")
SUMMARY_LINK = re.compile(r"\]\(([^)\s]+\.md)\)")


def check_sources(book: Path, problems: list[str]) -> tuple[int, int]:
    src = book / "src"
    pages = sorted(p for p in src.rglob("*.md") if p.name != "SUMMARY.md")
    summary = (src / "SUMMARY.md").read_text(encoding="utf-8")
    listed = {(src / link).resolve() for link in SUMMARY_LINK.findall(summary)}
    for page in pages:
        if page.resolve() not in listed:
            problems.append(f"{page.relative_to(book)}: not in SUMMARY.md (the book would never show it)")
    for link in SUMMARY_LINK.findall(summary):
        if not (src / link).is_file():
            problems.append(f"SUMMARY.md: {link} does not exist")
    includes = 0
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for match in INCLUDE.finditer(text):
            escaped, directive, argument = match.groups()
            if escaped:
                continue
            where = f"{page.relative_to(book)}: {{{{#{directive} {argument}}}}}"
            if directive != "include":
                problems.append(f"{where}: only {{{{#include}}}} is used in this book")
                continue
            includes += 1
            path_text, _, selector = argument.partition(":")
            target = (page.parent / path_text).resolve()
            if not target.is_file():
                problems.append(f"{where}: {target} does not exist")
                continue
            if not selector or re.fullmatch(r"\d*(:\d*)?", selector):
                # Whole file or a line range: nothing more to check.
                continue
            lines = target.read_text(encoding="utf-8").splitlines()
            starts = [i for i, line in enumerate(lines) if re.search(rf"ANCHOR:\s*{re.escape(selector)}\b", line)]
            ends = [i for i, line in enumerate(lines) if re.search(rf"ANCHOR_END:\s*{re.escape(selector)}\b", line)]
            if len(starts) != 1 or len(ends) != 1:
                problems.append(
                    f"{where}: anchor `{selector}` must be opened and closed once in {target} "
                    f"(found {len(starts)} ANCHOR, {len(ends)} ANCHOR_END)"
                )
                continue
            body = [line for line in lines[starts[0] + 1 : ends[0]] if line.strip() and "ANCHOR" not in line]
            if not body:
                problems.append(f"{where}: anchor `{selector}` in {target} is empty")
    return len(pages), includes


class Page(HTMLParser):
    """The ids and the outgoing links of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name in ("id", "name") if tag == "a" else ("id",):
            if attributes.get(name):
                self.ids.add(attributes[name] or "")
        if tag in ("a", "link") and attributes.get("href"):
            self.links.append(attributes["href"] or "")
        if tag in ("script", "img", "iframe") and attributes.get("src"):
            self.links.append(attributes["src"] or "")


def check_site(site: Path, problems: list[str]) -> tuple[int, int, int]:
    parsed: dict[Path, Page] = {}

    def page(path: Path) -> Page:
        if path not in parsed:
            parser = Page()
            parser.feed(path.read_text(encoding="utf-8"))
            parsed[path] = parser
        return parsed[path]

    html_files = sorted(site.rglob("*.html"))
    checked = external = 0
    for source in html_files:
        for link in page(source).links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc:
                if parts.scheme not in ("http", "https", "mailto"):
                    problems.append(f"{source.relative_to(site)}: unexpected link {link}")
                external += 1
                continue
            checked += 1
            where = f"{source.relative_to(site)}: link {link}"
            if parts.path.startswith("/"):
                target = site / unquote(parts.path.lstrip("/"))
            elif parts.path:
                target = source.parent / unquote(parts.path)
            else:
                target = source
            if target.is_dir():
                target = target / "index.html"
            target = target.resolve()
            if not target.is_file():
                problems.append(f"{where}: {target} does not exist")
                continue
            fragment = unquote(parts.fragment)
            if fragment and target.suffix == ".html" and fragment not in page(target).ids:
                problems.append(f"{where}: no element with id `{fragment}` in {target.relative_to(site.resolve())}")
    return len(html_files), checked, external


def main() -> int:
    book, site = Path(sys.argv[1]), Path(sys.argv[2])
    problems: list[str] = []
    pages, includes = check_sources(book, problems)
    html_files, links, external = check_site(site, problems)
    print(
        f"links: {pages} pages, {includes} includes, {html_files} HTML files, "
        f"{links} internal links checked ({external} external links not followed)"
    )
    if problems:
        print(f"links: {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
