"""The three standard PDF fonts logfile.pdf uses (Helvetica, Helvetica-Bold, Symbol): their
advance widths, for aligning text, and the encoding of text into runs of one font each.

Standard fonts are not embedded (every PDF reader has them), so a page costs no font work. Text is
written in WinAnsiEncoding; Greek letters go to the Symbol font; any other character that the
encoding lacks is written as '?'. Widths are Adobe's AFM metrics of the fonts (1/1000 em).
"""

from __future__ import annotations

#: Helvetica advance widths (1/1000 em) of ' ' (32) to '~' (126).
HELVETICA_ASCII = (
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556,
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
)
#: Helvetica widths of the other characters csrefine writes.
HELVETICA_OTHER = {
    'Å': 667, '±': 584, '°': 400, '²': 333, '³': 333, '—': 1000, '–': 556, '·': 278, 'µ': 556,
    '×': 584,
}

#: Helvetica-Bold advance widths (1/1000 em) of ' ' (32) to '~' (126).
HELVETICA_BOLD_ASCII = (
    278, 333, 474, 556, 556, 889, 722, 238, 333, 333, 389, 584, 278, 333, 278, 278,
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611,
    975, 722, 722, 722, 722, 667, 611, 778, 722, 278, 556, 722, 611, 833, 722, 778,
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 333, 278, 333, 584, 556,
    333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556, 278, 889, 611, 611,
    611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584,
)
#: Helvetica-Bold widths of the other characters csrefine writes.
HELVETICA_BOLD_OTHER = {
    'Å': 722, '±': 584, '°': 400, '²': 333, '³': 333, '—': 1000, '–': 556, '·': 278, 'µ': 611,
    '×': 584,
}

#: Greek letters set in the Symbol font: character -> (Symbol code, width).
SYMBOL_GREEK = {
    'α': (97, 631), 'β': (98, 549), 'γ': (103, 411), 'δ': (100, 494), 'Δ': (68, 612),
    'θ': (113, 521), 'λ': (108, 549), 'μ': (109, 576), 'π': (112, 549), 'σ': (115, 603),
    'φ': (102, 521), 'χ': (99, 549), 'ψ': (121, 686), 'ω': (119, 686), 'Ω': (87, 768),
}

#: Resource names of the fonts in a page's /Font dictionary.
FONT_NAMES = {"normal": "F1", "bold": "F2", "symbol": "F3"}
BASE_FONTS = {"F1": "Helvetica", "F2": "Helvetica-Bold", "F3": "Symbol"}


def _latin_width(char: str, bold: bool) -> int | None:
    ascii_widths, other = ((HELVETICA_BOLD_ASCII, HELVETICA_BOLD_OTHER) if bold
                           else (HELVETICA_ASCII, HELVETICA_OTHER))
    code = ord(char)
    if 32 <= code <= 126:
        return ascii_widths[code - 32]
    return other.get(char)


def runs(text: str, bold: bool = False) -> list[tuple[str, bytes, int]]:
    """``text`` as runs of (font resource name, encoded bytes, width in 1/1000 em)."""
    out: list[list] = []
    latin = FONT_NAMES["bold" if bold else "normal"]
    for char in text:
        if char in SYMBOL_GREEK:
            font, (code, width) = FONT_NAMES["symbol"], SYMBOL_GREEK[char]
            data = bytes([code])
        else:
            width = _latin_width(char, bold)
            if width is None:
                char, width = "?", _latin_width("?", bold)
            font, data = latin, char.encode("cp1252")
        if out and out[-1][0] == font:
            out[-1][1] += data
            out[-1][2] += width
        else:
            out.append([font, data, width])
    return [(f, bytes(d), w) for f, d, w in out]


def text_width(text: str, size_pt: float, bold: bool = False) -> float:
    """Width of ``text`` set at ``size_pt`` points, in points."""
    return sum(w for _, _, w in runs(text, bold)) * size_pt / 1000.0
