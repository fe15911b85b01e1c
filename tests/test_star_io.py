"""Particle STAR reading and writing: validation errors, RELION's table layout, the values the
writer keeps and the ones it changes."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
from relion_tools import star_values

from csrefine.errors import InputError
from csrefine.relion.star_io import read_particle_star, write_updated_star

DATA = Path(__file__).parent / "data"


def _write(path, optics, particles, extra=None):
    blocks = {"optics": pd.DataFrame(optics), "particles": pd.DataFrame(particles)}
    if extra:
        blocks.update(extra)
    starfile.write(blocks, path, overwrite=True)
    return path


OPTICS = {"rlnOpticsGroupName": ["og1", "og2"], "rlnOpticsGroup": [1, 2], "rlnVoltage": [300.0, 200.0],
          "rlnSphericalAberration": [2.7, 2.7], "rlnAmplitudeContrast": [0.1, 0.07],
          "rlnImagePixelSize": [1.0, 1.0], "rlnImageSize": [64, 64],
          "rlnBeamTiltX": [0.3, 0.0], "rlnBeamTiltY": [-0.2, 0.0],
          "rlnEvenZernike": ["[0.0,0.1,0.2]", "[]"]}


def _particles(n=4):
    return {"rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(n)],
            "rlnGroupName": ["007"] * n,  # must stay '007', not become 7
            "rlnDefocusU": np.linspace(10000, 20000, n), "rlnDefocusV": np.linspace(9900, 19900, n),
            "rlnDefocusAngle": [12.5] * n, "rlnAngleRot": [1.0] * n, "rlnAngleTilt": [2.0] * n,
            "rlnAnglePsi": [3.0] * n, "rlnOriginXAngst": [0.5] * n, "rlnOriginYAngst": [-0.5] * n,
            "rlnOpticsGroup": [1, 2] * (n // 2), "rlnRandomSubset": [1, 2] * (n // 2),
            "rlnMicrographName": ["mic1.mrc"] * n}


#: Two optics groups and four particles as relion_star_handler (RELION 3.1.3) writes them:
#: right-aligned fields, so the rows start with spaces (optics rows: lines 17-18; the particles'
#: loop_: line 25, rows: lines 38-41).
RELION_LAYOUT = (DATA / "relion31_two_groups.star").read_text()


def _changed(before: dict, after: dict, ignore=()) -> dict:
    """block -> column -> rows whose text differs (columns of ``ignore`` left out)."""
    assert list(after) == list(before)
    out = {}
    for block, columns in before.items():
        assert list(after[block])[:len(columns)] == list(columns), block
        for column, values in columns.items():
            rows = [i for i, (a, b) in enumerate(zip(values, after[block][column])) if a != b]
            assert len(after[block][column]) == len(values)
            if rows and column not in ignore:
                out.setdefault(block, {})[column] = rows
    return out


def test_rows_that_start_with_spaces_get_each_new_value_in_its_own_column(tmp_path):
    """RELION's layout: the new Cs, beam tilt and defocus land in their columns, every other
    value keeps its text, every row keeps its number of values."""
    path = tmp_path / "run_data.star"
    path.write_text(RELION_LAYOUT)
    star = read_particle_star(path)
    out = tmp_path / "out.star"
    write_updated_star(star, out, {1: 3.0017219362}, {1: 100.0}, {1: (0.31, -0.21)},
                       {1: np.array([0.0, 0.1, 0.25])})
    before, after = star_values(path), star_values(out)
    assert _changed(before, after) == {
        "optics": {c: [0] for c in ("rlnSphericalAberration", "rlnBeamTiltX", "rlnBeamTiltY",
                                    "rlnEvenZernike")},
        "particles": {"rlnDefocusU": [0, 2], "rlnDefocusV": [0, 2]}}
    assert after["optics"]["rlnSphericalAberration"][0] == "3.001721936"
    assert after["optics"]["rlnBeamTiltX"][0] == "0.310000000"
    assert after["optics"]["rlnEvenZernike"][0] == "[0.0,0.1,0.25]"
    assert after["particles"]["rlnDefocusU"][:3] == ["10100.000000", "13333.333333", "16766.666667"]
    g = read_particle_star(out).groups[1]
    assert (g.cs_mm, g.amplitude_contrast, g.voltage_kv) == (3.001721936, 0.1, 300.0)


def test_ctf_refine_output_keeps_every_value_but_the_refined_ones(tmp_path):
    """relion_ctf_refine --fit_aberr's output (RELION-written, three optics groups, beam tilt,
    odd and 4th-order even Zernike terms): only the refined values change."""
    star = read_particle_star(DATA / "relion31_ctf_refine.star")
    assert sorted(star.groups) == [1, 2, 3] and star.groups[2].even_zernike.size == 9
    even = star.groups[2].even_zernike.copy()
    even[6] = 0.0
    out = tmp_path / "out.star"
    write_updated_star(star, out, {2: 2.345678912, 3: 2.5}, {2: -40.0, 3: 0.0},
                       {2: (0.1, 0.2)}, {2: even})
    before, after = star_values(star.path), star_values(out)
    groups = star.particles.optics_group
    moved = np.flatnonzero(groups == 2).tolist()
    assert _changed(before, after) == {
        "optics": {"rlnSphericalAberration": [1, 2], "rlnBeamTiltX": [1], "rlnBeamTiltY": [1],
                   "rlnEvenZernike": [1]},
        "particles": {"rlnDefocusU": moved, "rlnDefocusV": moved}}
    new = read_particle_star(out)
    assert new.groups[2].cs_mm == 2.345678912 and new.groups[3].cs_mm == 2.5
    np.testing.assert_array_equal(new.groups[2].even_zernike, even)
    np.testing.assert_allclose(new.particles.defocus_u_A - star.particles.defocus_u_A,
                               np.where(groups == 2, -40.0, 0.0), atol=1e-6)


def test_reads_groups_and_particles(tmp_path):
    star = read_particle_star(_write(tmp_path / "p.star", OPTICS, _particles()))
    assert sorted(star.groups) == [1, 2]
    g1 = star.groups[1]
    assert (g1.voltage_kv, g1.cs_mm, g1.beam_tilt_x_mrad, g1.has_beam_tilt) == (300.0, 2.7, 0.3, True)
    assert np.allclose(g1.even_zernike, [0.0, 0.1, 0.2])
    assert star.groups[2].even_zernike.size == 0
    assert np.allclose(star.particles.defocus_angle_deg, 12.5)
    assert np.array_equal(star.particles.half_set, [1, 2, 1, 2])


def test_other_blocks_and_text_values_are_copied(tmp_path):
    path = _write(tmp_path / "p.star", OPTICS, _particles(),
                  extra={"other": pd.DataFrame({"rlnSomething": ["a", "b"]})})
    original = path.read_bytes()
    star = read_particle_star(path)
    out = tmp_path / "out.star"
    write_updated_star(star, out, {1: 2.9}, {1: 100.0}, {1: (0.3 * 2.7 / 2.9, -0.2 * 2.7 / 2.9)})
    assert path.read_bytes() == original  # the input is untouched
    before, after = star_values(path), star_values(out)
    assert _changed(before, after) == {
        "optics": {"rlnSphericalAberration": [0], "rlnBeamTiltX": [0], "rlnBeamTiltY": [0]},
        "particles": {"rlnDefocusU": [0, 2], "rlnDefocusV": [0, 2]}}
    assert after["particles"]["rlnGroupName"] == ["007"] * 4
    assert after["other"] == {"rlnSomething": ["a", "b"]}
    assert "# Created by the starfile Python package" in out.read_text().splitlines()[0]


def test_an_even_zernike_column_is_added_where_the_input_has_none(tmp_path):
    optics = {k: v for k, v in OPTICS.items() if k != "rlnEvenZernike"}
    star = read_particle_star(_write(tmp_path / "p.star", optics, _particles()))
    write_updated_star(star, tmp_path / "out.star", {2: 2.8}, {}, {}, {2: [0.0, 0.1, 0.0]})
    after = star_values(tmp_path / "out.star")
    assert list(after["optics"])[-1] == "rlnEvenZernike"
    assert after["optics"]["rlnEvenZernike"] == ["[]", "[0.0,0.1,0.0]"]
    out = read_particle_star(tmp_path / "out.star")
    assert out.groups[1].even_zernike.size == 0 and out.groups[2].cs_mm == 2.8


def test_z40_is_folded_into_cs_and_relions_phase_changes_only_by_the_refined_change(tmp_path):
    """Data after CtfRefine's 4th-order fit: rlnEvenZernike holds a Z4^0 (part of the Cs) and
    every other even term. The output optics carry the total Cs, Z4^0's k^4 part folded out, and
    RELION's gamma (beam tilt, all even terms, per particle) equals the input's plus exactly the
    refined change (Cs change and defocus offset), to 1e-6 rad over the band."""
    from csrefine.forward import particle_gamma, pixel_terms
    from csrefine.fourier import make_band
    from csrefine.group_fit import not_refined_result, zernike_cs_mm
    from csrefine.relion.star_io import format_vector
    from csrefine.relion.updated_star import refined_values
    from csrefine.results import Refinement
    from csrefine.zernike import isotropic_k4_rad

    even = [0.05, 0.02, -0.3, 0.04, 0.01, -0.02, 0.35, 0.03, -0.01]
    optics = dict(OPTICS, rlnEvenZernike=[format_vector(even), "[]"])
    star = read_particle_star(_write(tmp_path / "p.star", optics, _particles()))
    g_in = star.groups[1]
    cs_zernike = zernike_cs_mm(g_in)
    assert cs_zernike == pytest.approx(0.35 * 6 / (0.5 * np.pi * 1e7 * 0.0196875**3), rel=1e-3)
    change_mm, offset_A = 0.012, -35.0  # what the fit asked for, relative to the input optics
    result = not_refined_result(g_in, 100, "", [20.0, 3.0])
    result.refined, result.defocus_offset_A = True, offset_A
    result.cs_refined_mm = g_in.cs_mm + cs_zernike + change_mm
    write_updated_star(star, tmp_path / "out.star",
                       *refined_values(star, Refinement([result], None, 3.0, [20, 3], "", {})))
    out = read_particle_star(tmp_path / "out.star")
    g_out = out.groups[1]
    assert g_out.cs_mm == pytest.approx(result.cs_refined_mm, abs=1e-6)
    assert isotropic_k4_rad(g_out.even_zernike) == pytest.approx(0.0, abs=1e-12)
    assert g_out.even_zernike[6] == 0.0 and g_out.even_zernike[8] == even[8]
    band = make_band(64, 1.0, 1 / 30.0, 1 / 2.0)
    sel = star.particles.optics_group == 1
    before = particle_gamma(pixel_terms(g_in, band), star.particles.subset(sel))
    after = particle_gamma(pixel_terms(g_out, band), out.particles.subset(sel))
    terms = pixel_terms(g_in, band)
    expected = before + terms.cs_factor * change_mm * terms.k2**2 + terms.defocus_factor * offset_A * terms.k2
    assert np.abs(after - expected).max() < 1e-6
    # and the coma RELION derives from the beam tilt and the table's Cs is unchanged
    np.testing.assert_allclose(pixel_terms(g_out, band).odd_phase, terms.odd_phase, atol=1e-6)


def test_image_names_are_split_into_stacks_and_indices(tmp_path):
    star = read_particle_star(_write(tmp_path / "p.star", OPTICS, _particles()))
    assert star.stack_paths == ["stack.mrcs"]
    assert star.image_index.tolist() == [0, 1, 2, 3]
    for name, message in (("stack.mrcs", r"'stack.mrcs' \(row 3\) is not of the form N@stack"),
                          ("3@", r"'3@' \(row 3\) is not of the form N@stack"),
                          ("0@stack.mrcs", r"'0@stack.mrcs' \(row 3\) has no valid image number"),
                          ("x@stack.mrcs", r"'x@stack.mrcs' \(row 3\) has no valid image number"),
                          ("99999999999999999999999@stack.mrcs",
                           r"'99999999999999999999999@stack.mrcs' \(row 3\) has no valid image "
                           r"number \(numbers start at 1 and stay below 1e\+09\)")):
        bad = _particles()
        bad["rlnImageName"][2] = name
        with pytest.raises(InputError, match=message):
            read_particle_star(_write(tmp_path / "b.star", OPTICS, bad))


@pytest.mark.parametrize("mutate, message", [
    (lambda o, p: o.pop("rlnSphericalAberration"), "rlnSphericalAberration"),
    (lambda o, p: p.pop("rlnAngleTilt"), "rlnAngleTilt"),
    (lambda o, p: p.pop("rlnOriginXAngst"), "rlnOriginXAngst"),
    (lambda o, p: p.pop("rlnRandomSubset"), "rlnRandomSubset"),
    (lambda o, p: p.__setitem__("rlnDefocusU", ["nan", 1, 2, 3]), "rlnDefocusU"),
    (lambda o, p: p.__setitem__("rlnRandomSubset", [1, 3, 1, 2]), "rlnRandomSubset"),
    (lambda o, p: p.__setitem__("rlnOpticsGroup", [1, 5, 1, 2]), "optics group 5"),
    (lambda o, p: p.__setitem__("rlnOpticsGroup", [1, 1e30, 1, 2]), "_rlnOpticsGroup must be a whole"),
    (lambda o, p: o.__setitem__("rlnVoltage", ["abc", 300]), "rlnVoltage"),
    (lambda o, p: o.__setitem__("rlnCtfDataAreCtfPremultiplied", [1, 0]), "pre-multiplied"),
])
def test_bad_tables_name_the_column(tmp_path, mutate, message):
    optics, particles = dict(OPTICS), _particles()
    mutate(optics, particles)
    path = _write(tmp_path / "bad.star", optics, particles)
    with pytest.raises(InputError, match=message):
        read_particle_star(path)


def test_a_column_given_twice_is_named(tmp_path):
    text = RELION_LAYOUT.replace("_rlnDefocusV #4", "_rlnDefocusU #4")
    (tmp_path / "twice.star").write_text(text)
    with pytest.raises(InputError, match=r"twice.star: data_particles has the column "
                                         r"_rlnDefocusU twice \(the loop of line 25\)"):
        read_particle_star(tmp_path / "twice.star")


def test_a_table_without_optics_of_any_kind_is_refused(tmp_path):
    path = tmp_path / "old.star"
    starfile.write(pd.DataFrame(_particles()), path)
    with pytest.raises(InputError, match="no data_optics table, and data_ does not state the "
                                         "optics per particle"):
        read_particle_star(path)
    path.write_text("data_x\n\nloop_\n_rlnDefocusU #1\n1000\n")
    with pytest.raises(InputError, match="no data_optics table .* and no particle table"):
        read_particle_star(path)


def _starfile_view(path):
    """What starfile reads: per block, column -> list of text values."""
    blocks = starfile.read(path, always_dict=True,
                           parse_as_string=["rlnImageName", "rlnOpticsGroupName", "rlnEvenZernike",
                                            "rlnMicrographName", "rlnGroupName"])
    return {name: {c: [str(v) for v in table[c]] for c in table.columns}
            for name, table in blocks.items()}


def test_reader_keeps_the_columns_asked_for_as_starfile_reads_them(tmp_path):
    """read_tables against starfile on a starfile-written table: same columns, values, rows."""
    from csrefine.relion.star_io import PARTICLE_COLUMNS
    from csrefine.relion.star_tables import read_tables

    numeric = frozenset(PARTICLE_COLUMNS) - {"rlnImageName"}
    path = _write(tmp_path / "p.star", OPTICS, _particles(6))
    tables, blocks = read_tables(path, lambda b, labels: (
        (tuple(labels), frozenset()) if b == "optics"
        else (PARTICLE_COLUMNS, numeric)))
    assert blocks == ["optics", "particles"]
    theirs = _starfile_view(path)
    assert list(tables["optics"].columns) == list(theirs["optics"])
    assert set(tables["particles"].columns) == set(PARTICLE_COLUMNS) & set(theirs["particles"])
    assert "rlnGroupName" in tables["particles"].labels
    for block, table in tables.items():
        assert len(table) == len(next(iter(theirs[block].values())))
        for column, data in table.columns.items():
            if column in numeric and block == "particles":
                assert list(data) == [float(v) for v in theirs[block][column]], column
            elif column in ("rlnImageName", "rlnOpticsGroupName", "rlnEvenZernike"):
                assert data == theirs[block][column], column
            else:
                assert [float(v) for v in data] == [float(v) for v in theirs[block][column]]


def test_numbers_are_converted_in_chunks_and_a_bad_value_is_named_by_its_row(tmp_path,
                                                                               monkeypatch):
    """A million-row file holds at most CHUNK_ROWS texts per numeric column; the first bad
    value is reported with its row, also beyond the first chunk."""
    from csrefine.relion import star_io, star_tables
    monkeypatch.setattr(star_tables, "CHUNK_ROWS", 3)
    monkeypatch.setattr(star_io, "CHUNK_ROWS", 3)
    particles = _particles(8)
    path = _write(tmp_path / "ok.star", OPTICS, particles)
    star = read_particle_star(path)
    np.testing.assert_allclose(star.particles.defocus_u_A, particles["rlnDefocusU"], atol=1e-6)
    bad = dict(particles, rlnAnglePsi=[3.0] * 6 + ["x1", "nan"])
    with pytest.raises(InputError, match=r"_rlnAnglePsi has a non-numeric or non-finite value "
                                         r"'x1' in row 7"):
        read_particle_star(_write(tmp_path / "bad.star", OPTICS, bad))
    half = dict(particles, rlnRandomSubset=[1, 2, 1, 2, 1, 2, 1.5, 2])
    with pytest.raises(InputError, match=r"_rlnRandomSubset must be a whole number, got '1.5' "
                                         r"in row 7"):
        read_particle_star(_write(tmp_path / "half.star", OPTICS, half))
    names = dict(particles, rlnImageName=particles["rlnImageName"][:6] + ["7@x.mrcs", "8x@y"])
    star = read_particle_star(_write(tmp_path / "names.star", OPTICS, dict(names, rlnImageName=(
        names["rlnImageName"][:7] + ["8@y.mrcs"]))))
    assert star.stack_paths == ["stack.mrcs", "x.mrcs", "y.mrcs"]
    assert star.stack_code.tolist() == [0] * 6 + [1, 2] and star.image_index[-2:].tolist() == [6, 7]
    with pytest.raises(InputError, match=r"'8x@y' \(row 8\) has no valid image number"):
        read_particle_star(_write(tmp_path / "names.star", OPTICS, names))


def test_empty_or_key_value_blocks_are_named(tmp_path):
    path = _write(tmp_path / "p.star", OPTICS, _particles())
    text = path.read_text()
    header_only = text[:text.rindex("loop_")] + "loop_\n_rlnImageName #1\n_rlnDefocusU #2\n"
    (tmp_path / "h.star").write_text(header_only)
    with pytest.raises(InputError, match="data_particles has no rows"):
        read_particle_star(tmp_path / "h.star")
    particles_part = text[text.index("data_particles"):]
    (tmp_path / "kv.star").write_text("data_optics\n\n_rlnVoltage 300\n\n" + particles_part)
    with pytest.raises(InputError, match="data_optics is not a table"):
        read_particle_star(tmp_path / "kv.star")
    (tmp_path / "twice.star").write_text(text + "\n" + particles_part)
    with pytest.raises(InputError, match="data_particles appears twice"):
        read_particle_star(tmp_path / "twice.star")


def test_quotes_tabs_comments_and_crlf_are_read_and_the_output_has_lf(tmp_path):
    path = tmp_path / "q.star"
    optics = ("data_optics\r\n\r\nloop_\r\n_rlnOpticsGroup #1\r\n_rlnOpticsGroupName #2\r\n"
              "_rlnVoltage #3\r\n_rlnSphericalAberration #4\r\n_rlnAmplitudeContrast #5\r\n"
              "_rlnImagePixelSize #6\r\n_rlnImageSize #7\r\n"
              "1\t'my group'\t300\t2.7\t0.1\t1.0\t64\r\n\r\n")
    header = "".join(f"_{c} #{i + 1}\r\n" for i, c in enumerate(
        ["rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnAngleRot", "rlnAngleTilt",
         "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnRandomSubset"]))
    rows = "".join(f"'{i + 1:06d}@stacks/a b.mrcs'   10000 9900 1 2 3 0.5 -0.5 {1 + i % 2}\r\n"
                   for i in range(4))
    path.write_bytes(("# version 30001\r\n" + optics + "# version 30001\r\ndata_particles\r\n\r\n"
                      "loop_\r\n" + header + "# a comment\r\n" + rows).encode())
    star = read_particle_star(path)
    assert star.groups[1].name == "my group"
    assert star.stack_paths == ["stacks/a b.mrcs"]
    assert list(star.image_index) == [0, 1, 2, 3]
    assert list(star.particles.half_set) == [1, 2, 1, 2]
    write_updated_star(star, tmp_path / "out.star", {1: 2.9}, {1: 10.0}, {})
    written = (tmp_path / "out.star").read_bytes()
    assert b"\r" not in written and b"# a comment\n" in written
    assert b"\n1 'my group' 300 2.900000000 0.1 1.0 64\n" in written
    assert b"\n'000002@stacks/a b.mrcs' 10010.000000 9910.000000 1 2 3 0.5 -0.5 2\n" in written


def test_a_hash_in_a_value_is_a_value_and_after_a_space_a_comment(tmp_path):
    """As RELION 3.1.3 reads them: 'og#1' and 'stack#a.mrcs' are values; ' # ...' after a
    row's values is a comment; the writer keeps the values and leaves the comment out."""
    text = (RELION_LAYOUT.replace("opticsGroup1", "og#1")
            .replace("000003@stack.mrcs", "000003@stack#a.mrcs")
            .replace("-0.50000            1            2 \n", "-0.50000 1 2 # third\n"))
    path = tmp_path / "hash.star"
    path.write_text(text)
    star = read_particle_star(path)
    assert star.groups[1].name == "og#1"
    assert star.stack_paths == ["stack.mrcs", "stack#a.mrcs"]
    write_updated_star(star, tmp_path / "out.star", {1: 2.9}, {}, {})
    after = star_values(tmp_path / "out.star")
    assert after["optics"]["rlnOpticsGroupName"] == ["og#1", "opticsGroup2"]
    assert after["particles"]["rlnImageName"][2] == "000003@stack#a.mrcs"
    assert "third" not in (tmp_path / "out.star").read_text()


def test_what_relion_refuses_between_rows_is_named_or_left_out(tmp_path):
    """A blank line ends a loop (RELION ignores rows after it: named as an error); a comment
    line among rows (RELION stops there) is read past and left out of the output; a data_
    right after a row gets a blank line before it; an unclosed quote is named."""
    path = tmp_path / "p.star"
    path.write_text(RELION_LAYOUT.replace("            2            2 \n",
                                          "            2            2 \n\n"))
    with pytest.raises(InputError, match=r"p.star: line 41: text after the end of "
                                         r"data_particles's loop"):
        read_particle_star(path)
    lines = RELION_LAYOUT.rstrip().splitlines()
    lines.insert(38, "# among the rows")
    path.write_text("\n".join(lines) + "\ndata_extra\nloop_\n_rlnX #1\n5\n")
    star = read_particle_star(path)
    assert len(star.particles) == 4
    write_updated_star(star, tmp_path / "out.star", {}, {}, {})
    written = (tmp_path / "out.star").read_text()
    assert "among the rows" not in written and " 2 1\n\ndata_extra\n" in written
    assert star_values(tmp_path / "out.star")["extra"] == {"rlnX": ["5"]}
    path.write_text(RELION_LAYOUT.replace("opticsGroup2", "'opticsGroup2"))
    with pytest.raises(InputError, match=r"line 18: the quote of \"'opticsGroup2\" is not closed"):
        read_particle_star(path)


def test_a_ragged_row_is_named_by_file_and_line(tmp_path):
    path = _write(tmp_path / "p.star", OPTICS, _particles())
    lines = path.read_text().splitlines(keepends=True)
    last = max(i for i, line in enumerate(lines) if "@stack.mrcs" in line)
    lines[last] = lines[last].rstrip("\n") + " 42\n"
    path.write_text("".join(lines))
    with pytest.raises(InputError, match=rf"p.star: line {last + 1} of data_particles has 14 "
                                         rf"values for its 13 columns"):
        read_particle_star(path)


def test_reading_a_particle_star_imports_neither_pandas_nor_starfile(tmp_path):
    import subprocess
    import sys
    path = _write(tmp_path / "p.star", OPTICS, _particles())
    code = ("import sys; from csrefine.relion.star_io import read_particle_star; "
            f"s = read_particle_star({str(path)!r}); assert len(s.particles) == 4; "
            "print(sorted(m for m in ('pandas', 'starfile') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
