"""The writer on generated layouts of one table: padding, alignment, tabs, CRLF, quotes, comment
lines, a '#' in a value, column order, missing optional columns, RELION 3.0's table without an
optics table, RELION 4/5's version line. Its output, read back by csrefine's reader and (a
sample, where RELION is installed) by relion_star_handler, holds the input's values apart from
the intended changes."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from relion_tools import (
    compare_rewrites,
    meant_values,
    relion_rewrite,
    star_values,
)

from csrefine.images import write_stack
from csrefine.relion.star_io import format_vector, read_particle_star, write_updated_star

N = 6
EVEN = [0.0, 0.1, -0.2, 0.0, 0.0, 0.03, 0.05]
OPTICS = {
    "rlnOpticsGroup": ["1", "2"], "rlnOpticsGroupName": ["NAME", "opticsGroup2"],
    "rlnVoltage": ["300.000000", "200.000000"], "rlnSphericalAberration": ["2.700000", "2.000000"],
    "rlnAmplitudeContrast": ["0.100000", "0.070000"], "rlnImagePixelSize": ["1.600000", "1.600000"],
    "rlnImageSize": ["64", "64"], "rlnBeamTiltX": ["0.300000", "-0.10000"],
    "rlnBeamTiltY": ["-0.20000", "0.000000"], "rlnEvenZernike": ["[0,0.1,0.2,0,0,0,0.05]", "[]"]}
GROUP = [1, 2, 1, 1, 2, 2]
PARTICLES = {
    "rlnImageName": [f"{i + 1:06d}@STACK" for i in range(N)],
    "rlnMicrographName": [f"mic{i % 2}.mrc" for i in range(N)],
    "rlnDefocusU": [f"{12000 + 500 * i:.6f}" for i in range(N)],
    "rlnDefocusV": [f"{11800 + 500 * i:.6f}" for i in range(N)],
    "rlnDefocusAngle": ["-12.50000"] * N, "rlnCtfBfactor": ["0.000000"] * N,
    "rlnAngleRot": [f"{10.0 * i:.6f}" for i in range(N)], "rlnAngleTilt": ["90.000000"] * N,
    "rlnAnglePsi": ["-45.00000"] * N, "rlnOriginXAngst": ["0.800000"] * N,
    "rlnOriginYAngst": ["-1.60000"] * N, "rlnOpticsGroup": [str(g) for g in GROUP],
    "rlnRandomSubset": [str(i % 2 + 1) for i in range(N)], "rlnGroupName": ["007"] * N}
OPTIONAL = {"tilt": ("rlnBeamTiltX", "rlnBeamTiltY"), "even": ("rlnEvenZernike",),
            "angle": ("rlnDefocusAngle",), "bfactor": ("rlnCtfBfactor",)}
# the intended changes: group 1's Cs, beam tilt and even terms, both groups' defocus
CS_MM, TILT, OFFSET_A = {1: 2.912345678}, {1: (0.25, -0.125)}, {1: 123.0, 2: -7.5}
SEPARATORS = (" ", "\t", "  ", " \t ")


@dataclass(frozen=True)
class Layout:
    align: str          # right (RELION), left, single, tabs, mixed
    lead: str           # before a row's first value
    trail: str          # after its last value
    eol: str            # \n or \r\n
    quote: str          # the quote around values with a space, or "" (then '#' in them)
    comments: frozenset  # top, labels, before_rows, among_rows, after_values
    version: str        # the version comment before each block
    optics_order: tuple
    particle_order: tuple
    dropped: frozenset  # keys of OPTIONAL
    relion30: bool      # one particle table stating the optics per particle

    @property
    def group_name(self) -> str:
        return f"{self.quote}og 1{self.quote}" if self.quote else "og#1"

    @property
    def stack(self) -> str:
        return "my stack.mrcs" if self.quote else "stack#a.mrcs"


@st.composite
def layouts(draw) -> Layout:
    relion30 = draw(st.booleans())
    dropped = draw(st.frozensets(st.sampled_from(sorted(OPTIONAL))))
    if relion30:
        dropped |= {"even"}
    optics, particles = _columns(dropped, relion30)
    return Layout(
        draw(st.sampled_from(["right", "left", "single", "tabs", "mixed"])),
        draw(st.sampled_from(["", " ", "   ", "\t"])), draw(st.sampled_from(["", " ", "\t "])),
        draw(st.sampled_from(["\n", "\r\n"])), draw(st.sampled_from(['"', "'", ""])),
        draw(st.frozensets(st.sampled_from(["top", "labels", "before_rows", "among_rows",
                                            "after_values"]))),
        # RELION 3.1.3 converts no table with a version line and without optics table
        draw(st.sampled_from([""] if relion30 else ["", "# version 30001", "# version 50001"])),
        tuple(draw(st.permutations(optics))), tuple(draw(st.permutations(particles))),
        dropped, relion30)


def _columns(dropped, relion30) -> tuple[list, list]:
    gone = {c for key in dropped for c in OPTIONAL[key]}
    optics = [c for c in OPTICS if c not in gone]
    particles = [c for c in PARTICLES if c not in gone]
    if relion30:
        particles = [c for c in particles if c != "rlnOpticsGroup"] + [
            "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnMagnification",
            "rlnDetectorPixelSize"] + [c for c in OPTIONAL["tilt"] if c not in gone]
        particles = [{"rlnOriginXAngst": "rlnOriginX", "rlnOriginYAngst": "rlnOriginY"}.get(c, c)
                     for c in particles]
    return optics, particles


def _values(layout: Layout) -> tuple[dict, dict]:
    """The input's values as text: optics table (3.1) and particle table, by column."""
    optics = {c: list(v) for c, v in OPTICS.items()}
    optics["rlnOpticsGroupName"][0] = layout.group_name
    particles = {c: list(v) for c, v in PARTICLES.items()}
    particles["rlnImageName"] = [n.replace("STACK", layout.stack) for n in particles["rlnImageName"]]
    if layout.quote:
        particles["rlnImageName"] = [f"{layout.quote}{n}{layout.quote}"
                                     for n in particles["rlnImageName"]]
    for column in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                   "rlnBeamTiltX", "rlnBeamTiltY"):
        particles[column] = [optics[column][g - 1] for g in GROUP]
    particles["rlnMagnification"] = ["10000.000000"] * N
    particles["rlnDetectorPixelSize"] = ["1.600000"] * N
    particles["rlnOriginX"], particles["rlnOriginY"] = ["0.500000"] * N, ["-1.00000"] * N
    return optics, particles


def _row(values: list, layout: Layout) -> str:
    if layout.align == "right":
        text = " ".join(f"{v:>12}" for v in values)
    elif layout.align == "left":
        text = " ".join(f"{v:<12}" for v in values)
    elif layout.align == "mixed":
        text = "".join(v + SEPARATORS[i % len(SEPARATORS)] for i, v in enumerate(values)).rstrip()
    else:
        text = ("\t" if layout.align == "tabs" else " ").join(values)
    comment = " # after the values" if "after_values" in layout.comments else ""
    return layout.lead + text + layout.trail + comment


def _table(block: str, columns, values: dict, layout: Layout) -> list[str]:
    lines = [layout.version, "", f"data_{block}", "", "loop_"]
    for i, column in enumerate(columns):
        lines.append(f"_{column} #{i + 1}")
        if i == 1 and "labels" in layout.comments:
            lines.append("# among the labels")
    if "before_rows" in layout.comments:
        lines.append("# before the rows")
    rows = [_row([values[c][r] for c in columns], layout) for r in range(len(values[columns[0]]))]
    if "among_rows" in layout.comments:
        rows.insert(1, "# among the rows")
    return lines + rows + [""]


def render(layout: Layout) -> str:
    """The STAR text of ``layout``."""
    optics, particles = _values(layout)
    optics_columns, particle_columns = _columns(layout.dropped, layout.relion30)
    lines = ["# a file written by some program"] if "top" in layout.comments else []
    if not layout.relion30:
        lines += _table("optics", layout.optics_order, optics, layout)
    lines += _table("" if layout.relion30 else "particles", layout.particle_order, particles,
                    layout)
    return layout.eol.join(lines) + layout.eol


def _plain(layout: Layout) -> Layout:
    """The same values and columns in a layout RELION reads: single spaces, LF, no comments."""
    return Layout("single", "", "", "\n", layout.quote, frozenset(), layout.version,
                  layout.optics_order, layout.particle_order, layout.dropped, layout.relion30)


def _changes(layout: Layout):
    tilt = {} if "tilt" in layout.dropped else TILT
    even = {} if "even" in layout.dropped else {1: np.array(EVEN)}
    return CS_MM, OFFSET_A, tilt, even


def _write(d: Path, layout: Layout, name: str) -> Path:
    (d / f"{name}.star").write_bytes(render(layout).encode())
    write_stack(d / layout.stack, np.zeros((N, 64, 64), np.float32), 1.6)
    star = read_particle_star(d / f"{name}.star", base_dir=d)
    write_updated_star(star, d / f"{name}_out.star", *_changes(layout))
    return d / f"{name}_out.star"


def _expected(layout: Layout, before: dict) -> dict:
    """The particle and optics values the output should hold (text), from the input's."""
    particles = "" if layout.relion30 else "particles"
    groups = [int(g) for g in before[particles].get("rlnOpticsGroup", GROUP)] \
        if not layout.relion30 else GROUP
    out = {b: {c: list(v) for c, v in t.items()} for b, t in before.items()}
    p = out[particles]
    for column in ("rlnDefocusU", "rlnDefocusV"):
        p[column] = [f"{float(v) + OFFSET_A[g]:.6f}" for v, g in zip(p[column], groups)]
    new = {"rlnSphericalAberration": f"{CS_MM[1]:.9f}"}
    if "tilt" not in layout.dropped:
        new.update(rlnBeamTiltX=f"{TILT[1][0]:.9f}", rlnBeamTiltY=f"{TILT[1][1]:.9f}")
    if "even" not in layout.dropped:
        new["rlnEvenZernike"] = format_vector(EVEN)
    table, rows = (p, [i for i, g in enumerate(groups) if g == 1]) if layout.relion30 else (
        out["optics"], [out["optics"]["rlnOpticsGroup"].index("1")])
    for column, text in new.items():
        for row in rows:
            table[column][row] = text
    return out


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(layouts())
def test_the_output_holds_the_inputs_values_apart_from_the_changes(layout):
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        out = _write(d, layout, "in")
        before, after = star_values(d / "in.star"), star_values(out)
        assert after == _expected(layout, before)
        assert b"\r" not in out.read_bytes() and b"# among the rows" not in out.read_bytes()
        star = read_particle_star(out, base_dir=d)
        assert star.groups[1].cs_mm == CS_MM[1] and len(star.particles) == N
        name = "opticsGroup1" if layout.relion30 else layout.group_name.strip("'\"")
        assert star.groups[1].name == name


@pytest.mark.relion
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(layouts())
def test_relion_reads_the_output_with_the_inputs_values_apart_from_the_changes(relion, layout):
    """relion_star_handler's rewrites of the output and of the input (in a layout RELION reads:
    the generated one may not be) hold the same values, apart from the intended changes, which
    hold what csrefine meant (to RELION's six decimals). RELION turns a RELION 3.0 table into
    optics and particles tables, numbering the groups as csrefine does."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        out = _write(d, layout, "in")
        (d / "plain.star").write_text(render(_plain(layout)))
        relion_in = relion_rewrite("plain.star", "relion_in.star", cwd=d)
        relion_out = relion_rewrite(out.name, "relion_out.star", cwd=d)
        assert compare_rewrites(relion_in, relion_out,
                                meant_values(relion_in, *_changes(layout))) == []
