"""A PDF file of vector pages: paths, text in the standard fonts, RGB images, transparency.

The smallest part of PDF 1.4 that figures need, written directly (a page takes milliseconds).
Coordinates are PDF points (1/72 inch) from the page's lower left corner; colours are (r, g, b)
in 0..1. :func:`write` assembles the pages into a file with its cross-reference table.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from . import fonts

#: Bezier control distance of a quarter circle, as a fraction of the radius.
KAPPA = 0.5522847498


def _n(value: float) -> str:
    """A number for a content stream (two decimals, no trailing zeros)."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _pdf_string(data: bytes) -> bytes:
    """A PDF literal string: backslash, parentheses and bytes beyond ASCII escaped."""
    out = bytearray(b"(")
    for byte in data:
        if byte in (0x28, 0x29, 0x5C):
            out += b"\\" + bytes([byte])
        elif 32 <= byte < 127:
            out.append(byte)
        else:
            out += b"\\%03o" % byte
    return bytes(out + b")")


class Page:
    """One page being drawn (see the module docstring for units)."""

    def __init__(self, width_pt: float, height_pt: float):
        self.width_pt, self.height_pt = float(width_pt), float(height_pt)
        self.ops: list[bytes] = []
        self.images: list[np.ndarray] = []
        self.alphas: dict[float, str] = {}

    def _op(self, text: str) -> None:
        self.ops.append(text.encode("ascii"))

    # state ------------------------------------------------------------------------------
    def save(self) -> None:
        self._op("q")

    def restore(self) -> None:
        self._op("Q")

    def clip_rect(self, x: float, y: float, w: float, h: float) -> None:
        """Clip what follows (until :meth:`restore`) to a rectangle."""
        self._op(f"{_n(x)} {_n(y)} {_n(w)} {_n(h)} re W n")

    def alpha(self, value: float) -> None:
        """Opacity of what follows, strokes and fills (until :meth:`restore`)."""
        value = round(min(max(float(value), 0.0), 1.0), 3)
        name = self.alphas.setdefault(value, f"GS{len(self.alphas) + 1}")
        self._op(f"/{name} gs")

    def stroke_style(self, rgb, width_pt: float = 1.0, dash: tuple = ()) -> None:
        r, g, b = rgb
        pattern = " ".join(_n(d) for d in dash)
        self._op(f"{_n(r)} {_n(g)} {_n(b)} RG {_n(width_pt)} w [{pattern}] 0 d 0 J 1 j")

    def fill_color(self, rgb) -> None:
        r, g, b = rgb
        self._op(f"{_n(r)} {_n(g)} {_n(b)} rg")

    # shapes -----------------------------------------------------------------------------
    def polyline(self, xs, ys) -> None:
        """A stroked path through the points; NaN points break it into pieces (as in
        matplotlib)."""
        xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
        parts, pen_down = [], False
        for x, y in zip(xs.tolist(), ys.tolist()):
            if not (math.isfinite(x) and math.isfinite(y)):
                pen_down = False
                continue
            parts.append(f"{_n(x)} {_n(y)} {'l' if pen_down else 'm'}")
            pen_down = True
        if parts:
            self._op("\n".join(parts) + " S")

    def segments(self, x0, y0, x1, y1) -> None:
        """Separate straight segments (x0, y0)-(x1, y1), stroked."""
        parts = [f"{_n(a)} {_n(b)} m {_n(c)} {_n(d)} l"
                 for a, b, c, d in zip(*(np.asarray(v, dtype=float).tolist()
                                         for v in (x0, y0, x1, y1)))
                 if all(map(math.isfinite, (a, b, c, d)))]
        if parts:
            self._op("\n".join(parts) + " S")

    def rect(self, x: float, y: float, w: float, h: float, fill: bool = False,
             stroke: bool = True) -> None:
        paint = {(True, True): "B", (True, False): "f", (False, True): "S"}[(fill, stroke)]
        self._op(f"{_n(x)} {_n(y)} {_n(w)} {_n(h)} re {paint}")

    def circles(self, xs, ys, radius_pt: float) -> None:
        """Filled circles (markers) at the points."""
        k = KAPPA * radius_pt
        parts = []
        for x, y in zip(np.asarray(xs, float).tolist(), np.asarray(ys, float).tolist()):
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            r = radius_pt
            parts.append(
                f"{_n(x + r)} {_n(y)} m "
                f"{_n(x + r)} {_n(y + k)} {_n(x + k)} {_n(y + r)} {_n(x)} {_n(y + r)} c "
                f"{_n(x - k)} {_n(y + r)} {_n(x - r)} {_n(y + k)} {_n(x - r)} {_n(y)} c "
                f"{_n(x - r)} {_n(y - k)} {_n(x - k)} {_n(y - r)} {_n(x)} {_n(y - r)} c "
                f"{_n(x + k)} {_n(y - r)} {_n(x + r)} {_n(y - k)} {_n(x + r)} {_n(y)} c")
        if parts:
            self._op("\n".join(parts) + " f")

    # text and images --------------------------------------------------------------------
    def text(self, x: float, y: float, text: str, size_pt: float, rgb=(0, 0, 0),
             bold: bool = False, ha: str = "left", va: str = "baseline",
             rotation_deg: float = 0.0) -> None:
        """One line of text anchored at (x, y): ha left/center/right, va
        baseline/bottom/center/top (of the letters' height), rotated counter-clockwise."""
        pieces = fonts.runs(text, bold)
        width = sum(w for _, _, w in pieces) * size_pt / 1000.0
        dx = {"left": 0.0, "center": -width / 2, "right": -width}[ha]
        dy = {"baseline": 0.0, "bottom": 0.21 * size_pt, "center": -0.36 * size_pt,
              "top": -0.72 * size_pt}[va]
        c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
        ox, oy = x + c * dx - s * dy, y + s * dx + c * dy
        r, g, b = rgb
        out = [f"BT {_n(r)} {_n(g)} {_n(b)} rg {c:.4f} {s:.4f} {-s:.4f} {c:.4f} "
               f"{_n(ox)} {_n(oy)} Tm".encode("ascii")]
        for font, data, _ in pieces:
            out.append(f" /{font} {_n(size_pt)} Tf ".encode("ascii") + _pdf_string(data) + b" Tj")
        out.append(b" ET")
        self.ops.append(b"".join(out))

    def image(self, rgb: np.ndarray, x: float, y: float, w: float, h: float) -> None:
        """An (rows, columns, 3) uint8 image, first row at the top, filling the rectangle."""
        self.images.append(np.ascontiguousarray(rgb, dtype=np.uint8))
        self._op(f"q {_n(w)} 0 0 {_n(h)} {_n(x)} {_n(y)} cm /Im{len(self.images)} Do Q")


class _Objects:
    """The numbered objects of a PDF file, written in order with their offsets."""

    def __init__(self):
        self.chunks: list[bytes] = [b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"]
        self.offsets: list[int] = []
        self.size = len(self.chunks[0])

    def reserve(self) -> int:
        self.offsets.append(-1)
        return len(self.offsets)

    def put(self, number: int, body: bytes) -> None:
        chunk = b"%d 0 obj\n" % number + body + b"\nendobj\n"
        self.offsets[number - 1] = self.size
        self.chunks.append(chunk)
        self.size += len(chunk)

    def add(self, body: bytes) -> int:
        number = self.reserve()
        self.put(number, body)
        return number

    def stream(self, data: bytes, extra: bytes = b"") -> int:
        packed = zlib.compress(data, 6)
        return self.add(b"<< /Length %d /Filter /FlateDecode %s>>\nstream\n" % (len(packed), extra)
                        + packed + b"\nendstream")


def to_bytes(pages: list[Page], title: str = "") -> bytes:
    """The PDF file of ``pages``."""
    objs = _Objects()
    catalog, pages_obj = objs.reserve(), objs.reserve()
    font_objs = {name: objs.add(b"<< /Type /Font /Subtype /Type1 /BaseFont /%s%s >>" % (
        base.encode(), b"" if base == "Symbol" else b" /Encoding /WinAnsiEncoding"))
        for name, base in fonts.BASE_FONTS.items()}
    font_dict = b"<< " + b" ".join(b"/%s %d 0 R" % (k.encode(), v) for k, v in font_objs.items()) \
        + b" >>"
    kids = []
    for page in pages:
        images = []
        for rgb in page.images:
            rows, cols = rgb.shape[:2]
            images.append(objs.stream(rgb.tobytes(), b"/Type /XObject /Subtype /Image /Width %d "
                                      b"/Height %d /ColorSpace /DeviceRGB /BitsPerComponent 8 "
                                      % (cols, rows)))
        xobjects = b" ".join(b"/Im%d %d 0 R" % (i + 1, n) for i, n in enumerate(images))
        states = b" ".join(b"/%s << /Type /ExtGState /ca %s /CA %s >>" % (
            name.encode(), _n(a).encode(), _n(a).encode()) for a, name in page.alphas.items())
        content = objs.stream(b"\n".join(page.ops))
        kids.append(objs.add(
            b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %s %s] /Contents %d 0 R "
            b"/Resources << /Font %s /XObject << %s >> /ExtGState << %s >> >> >>"
            % (pages_obj, _n(page.width_pt).encode(), _n(page.height_pt).encode(), content,
               font_dict, xobjects, states)))
    objs.put(pages_obj, b"<< /Type /Pages /Kids [%s] /Count %d >>"
             % (b" ".join(b"%d 0 R" % k for k in kids), len(kids)))
    objs.put(catalog, b"<< /Type /Catalog /Pages %d 0 R >>" % pages_obj)
    info = objs.add(b"<< /Producer (csrefine) /Title %s >>" % _pdf_string(
        title.encode("cp1252", "replace")))
    xref = objs.size
    table = [b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs.offsets) + 1)]
    table += [b"%010d 00000 n \n" % offset for offset in objs.offsets]
    trailer = b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objs.offsets) + 1, catalog, info, xref)
    return b"".join(objs.chunks + table + [trailer])
