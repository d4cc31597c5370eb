"""A small strict HTML tree for the report tests (stdlib html.parser only).

``parse`` raises ``MalformedHTMLError`` on what a browser would silently repair: an end tag that
does not close the innermost open element, an element left open, a duplicate id.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
    "track", "wbr",
}  # fmt: skip


class MalformedHTMLError(AssertionError):
    pass


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)
    line: int = 0

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
        return [
            n
            for n in self.iter()
            if n.tag == tag and all(n.attrs.get(k.rstrip("_")) == v for k, v in attrs.items())
        ]

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def by_id(self, ident: str) -> Node:
        found = [n for n in self.iter() if n.attrs.get("id") == ident]
        assert len(found) == 1, f"{len(found)} elements with id={ident!r}"
        return found[0]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]
        self.ids: set[str] = set()
        self.doctype = ""

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def _open(self, tag: str, attrs: list[tuple[str, str | None]], *, closed: bool) -> None:
        values = {k: v if v is not None else "" for k, v in attrs}
        if len(values) != len(attrs):
            raise MalformedHTMLError(f"line {self.getpos()[0]}: duplicate attribute on <{tag}>")
        if "id" in values:
            if values["id"] in self.ids:
                raise MalformedHTMLError(f"duplicate id {values['id']!r}")
            self.ids.add(values["id"])
        node = Node(tag, values, line=self.getpos()[0])
        self.stack[-1].children.append(node)
        if not closed and tag not in VOID:
            self.stack.append(node)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open(tag, attrs, closed=False)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open(tag, attrs, closed=True)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            raise MalformedHTMLError(f"line {self.getpos()[0]}: end tag for void element <{tag}>")
        top = self.stack[-1]
        if top.tag != tag:
            raise MalformedHTMLError(
                f"line {self.getpos()[0]}: </{tag}> closes <{top.tag}> opened on line {top.line}"
            )
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    if len(builder.stack) != 1:
        open_tags = ", ".join(f"<{n.tag}> (line {n.line})" for n in builder.stack[1:])
        raise MalformedHTMLError(f"elements left open: {open_tags}")
    if builder.doctype.lower() != "doctype html":
        raise MalformedHTMLError(f"missing <!DOCTYPE html> (got {builder.doctype!r})")
    return builder.root
