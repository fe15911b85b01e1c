"""A corpus of bad or hostile inputs, each through every entry point it applies to.

Every case runs through ``csrefine refine`` (:func:`csrefine.cli.main`, the ``cli`` path),
``csrefine-relion`` (:func:`csrefine.relion.external_job.main`, ``relion``) and, where it
applies, ``csrefine refine`` with the project's cryoSPARC ``.cs`` dataset (``cs``). Each run must
exit non-zero (2), print exactly one line on stderr, without a traceback, naming the file and the
column/field/value, leave every input byte-identical, write no output (no particles, csrefine.json,
logfile.pdf, no staging directory or lock file, and no output directory the run created), and in
the External job write RELION_JOB_EXIT_FAILURE (or no marker where the job directory cannot be
used or belongs to another running job).

Cases (``name``: what is wrong; paths other than cli/relion/cs in brackets):

Particle files
 1. star_missing: the particle STAR does not exist
 2. star_is_directory: the particle STAR is a directory
 3. star_is_device: the particle STAR is a symbolic link to /dev/zero
 4. star_empty: a 0-byte STAR file
 5. star_binary: random bytes
 6. star_no_optics: no data_optics table
 7. star_no_particles: no data_particles table
 8. star_missing_column: _rlnAnglePsi missing
 9. star_nan_angle: NaN in _rlnAngleRot
10. star_text_defocus: 'abc' in _rlnDefocusU
11. star_duplicate_optics: optics group 1 twice in the optics table
12. star_fractional_group: _rlnOpticsGroup 1.5 in a particle row
13. star_fractional_subset: _rlnRandomSubset 1.5
14. star_subset_3: _rlnRandomSubset 3
15. star_unknown_group: particles of optics group 7, absent from the optics table
16. star_voltage_0: _rlnVoltage 0
17. star_voltage_absurd: _rlnVoltage 300000 (volts, not kV)
18. star_amplitude_1_5: _rlnAmplitudeContrast 1.5
19. star_cs_nan: _rlnSphericalAberration nan
20. star_pixel_0: _rlnImagePixelSize 0
21. star_pixel_negative: _rlnImagePixelSize -1.6
22. star_box_mismatch: _rlnImageSize 96, the stack holds 48x48 images
23. star_image_name_no_at: _rlnImageName without N@
24. star_image_number_0: _rlnImageName 0@stack
25. star_premultiplied: _rlnCtfDataAreCtfPremultiplied 1
Particle stacks
26. stack_missing: the stack file is absent
27. stack_truncated: the stack cut in half
28. stack_garbage_header: its header overwritten with 0xFF bytes
29. stack_huge_header: a header stating 100000^3 voxels (must not allocate)
30. stack_complex: a complex-valued (mode 4) stack
31. stack_nan: NaN in one image
32. stack_short: the STAR names image 301 of a 300-image stack
Half maps and mask
33. half_missing: half map 1 absent
34. half_complex: half map 1 complex-valued
35. half_identical: half map 2 is a copy of half map 1
36. half_shape: half map 2 of another box
37. half_pixel: half map 2's header pixel size 1.7 Å, half map 1's 1.6 Å
38. half_nan: NaN in half map 1
39. half_not_cubic: half map 1 is 48x48x40
40. half_huge_header: half map 1 states 100000^3 voxels
41. mask_zero: the mask is all zero
42. mask_negative: the mask is -1 everywhere
43. mask_shape: the mask has another box
Options
44. option_low_inf: resolution_low_A inf
45. option_band_swapped: resolution low 3.5 Å, high 20 Å
46. option_cs_search_nan: cs_search_mm nan
47. option_threads_0: --j 0
Outputs
48. out_under_file: the output directory below a regular file (relion: no marker possible)
49. out_symlink_loop: the output directory is a symbolic link to itself (relion: no marker)
50. out_overwrites_input: the particle file is where the output would go
51. out_locked: a live job's .csrefine.lock in the output directory (no marker; the lock and
    the directory stay as they were)
52. out_newline: a newline in --out / --o (nothing created, no marker)
53. out_name_too_long: a 300-character directory name under two new parents (no parent left)
54. job_of_another_job: --o Refine3D/job002/, a finished Refine3D job (relion only: refused, its
    RELION_JOB_EXIT_SUCCESS and outputs untouched, no marker)
55. job_of_another_job_bad_option: the same with a bad option value (the same)
56. half_fifo: half map 1 is a named pipe
cryoSPARC datasets (cs only)
57. cs_missing: the .cs file does not exist
58. cs_garbage: the .cs file is random bytes
59. cs_float_idx: blob/idx stored as float
60. cs_int_pose: alignments3D/pose stored as integers
61. cs_string_cs: ctf/cs_mm stored as strings
62. cs_voltage_0: ctf/accel_kv 0
63. cs_amplitude_1_5: ctf/amp_contrast 1.5
64. cs_path_outside: blob/path '../outside/particles.mrcs' leaves the project directory
65. cs_split_2: alignments3D/split 2
66. cs_missing_field: no ctf/df1_A
67. cs_duplicate_uid: two particles with the same uid

Besides the corpus: SIGTERM and SIGINT sent to a running ``csrefine refine`` and
``csrefine-relion`` (subprocesses: exit 128+N, one line, RELION_JOB_EXIT_ABORTED, no outputs, no
staging directory, no lock); a full disk (a 1 MiB tmpfs, where this test can mount one, else
skipped with the reason) and ENOSPC while the outputs are written; an import failure of the
External job (RELION_JOB_EXIT_FAILURE all the same); a stale lock taken over, also where its PID
now names another process, with the killed run's staging directory removed; a running job's lock
refused with its host and start; CRLF STAR files.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mrcfile
import numpy as np
import pytest
import starfile

from csrefine.cli import main as cli_main
from csrefine.relion.external_job import main as relion_main

pytestmark = pytest.mark.slow  # the whole corpus, ~40 s (CI runs it; not in the quick subset)

STAR = "Refine3D/job002/run_data.star"
HALF1 = "Refine3D/job002/run_half1_class001_unfil.mrc"
HALF2 = "Refine3D/job002/run_half2_class001_unfil.mrc"
MAP = "Refine3D/job002/run_class001.mrc"
MASK = "MaskCreate/job003/mask.mrc"
STACK = "Extract/job001/particles.mrcs"
CS = "J1_particles.cs"
JOB = "External/job004/"
OUT = "Out"
BOX = 48
N_PER_GROUP = 150
FAILURE, ABORTED, SUCCESS = "RELION_JOB_EXIT_FAILURE", "RELION_JOB_EXIT_ABORTED", "RELION_JOB_EXIT_SUCCESS"
FAST = {"min_particles": "10", "device": "cpu", "resolution_high_A": "4"}


# ------------------------------------------------------------------------------ the project
@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One small RELION project (2 optics groups x 150 particles, box 48) with a job directory
    as RELION creates it and the same particles as a cryoSPARC dataset (J1_particles.cs)."""
    from csrefine.cryosparc.convert import cryosparc_dataset_from_relion
    from csrefine.relion.example import make_example
    from csrefine.relion.star_io import read_particle_star

    root = tmp_path_factory.mktemp("bad_inputs_template")
    make_example(root, n_per_group=(N_PER_GROUP, N_PER_GROUP), box=BOX, seed=1)
    (root / JOB).mkdir(parents=True)
    dset = cryosparc_dataset_from_relion(read_particle_star(root / STAR), root, base_dir=root)
    dset.save(root / CS)
    return root


@pytest.fixture()
def project(template, tmp_path, monkeypatch):
    root = tmp_path / "project"
    shutil.copytree(template, root, symlinks=True)
    monkeypatch.chdir(root)
    return root


def snapshot(root: Path) -> dict:
    """Every file (content) and directory under ``root``, hidden ones and links included."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            elif not p.is_file():  # a named pipe: reading it would wait for a writer
                out[rel] = ("special",)
            else:
                out[rel] = ("file", p.read_bytes())
    return out


# ------------------------------------------------------------------------------ editing inputs
def edit_star(fn):
    blocks = starfile.read(STAR, always_dict=True)
    fn(blocks["optics"], blocks["particles"])
    starfile.write(blocks, STAR, overwrite=True)


def set_optics(column, value):
    def edit(optics, particles):
        optics[column] = optics[column].astype(object)
        optics.loc[0, column] = value
    return lambda root: edit_star(edit)


def set_particle(column, row, value):
    def edit(optics, particles):
        particles[column] = particles[column].astype(object)
        particles.loc[row, column] = value
    return lambda root: edit_star(edit)


def edit_cs(fn):
    from cryosparc.dataset import Dataset
    dset = Dataset.load(CS)
    dset = fn(dset) or dset
    dset.save(CS)


def retype_cs(name, dtype, convert):
    def fn(dset):
        values = np.asarray(dset[name])
        shape = values.shape[1:]
        dset = dset.drop_fields([name])
        dset.add_fields([(name, dtype, shape) if shape else (name, dtype)])
        dset[name] = convert(values)
        return dset
    return lambda root: edit_cs(fn)


def set_cs(name, value):
    def fn(dset):
        dset[name] = np.full(len(dset), value, dtype=np.asarray(dset[name]).dtype)
    return lambda root: edit_cs(fn)


def write_mrc(path, data, voxel=1.6):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        m.voxel_size = voxel


def map_data(path):
    return np.asarray(mrcfile.read(path)).copy()


def set_header(path, nx, ny, nz, mode=2, fill=None):
    """Overwrite the first words of an MRC header (or all 1024 bytes with ``fill``)."""
    with open(path, "r+b") as fh:
        if fill is not None:
            fh.write(bytes([fill]) * 1024)
        else:
            fh.write(np.array([nx, ny, nz, mode], dtype="<i4").tobytes())


def truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)


def remove(path):
    return lambda root: Path(path).unlink()


def overrides(**kw):
    return lambda root: kw


def _star_is_directory(root):
    Path("dir.star").mkdir()
    return {"star": "dir.star"}


def _star_is_device(root):
    os.symlink("/dev/zero", "zero.star")
    return {"star": "zero.star"}


def _star_bytes(data):
    def edit(root):
        Path(STAR).write_bytes(data)
    return edit


def _drop_block(name):
    def edit(root):
        blocks = starfile.read(STAR, always_dict=True)
        del blocks[name]
        starfile.write(blocks, STAR, overwrite=True)
    return edit


def _duplicate_optics(optics, particles):
    optics.loc[len(optics)] = optics.iloc[0]


def _stack_nan(root):
    with mrcfile.open(STACK, mode="r+") as m:
        m.data[4, 3, 3] = np.nan


def _stack_complex(root):
    data = map_data(STACK)
    with mrcfile.new(STACK, overwrite=True) as m:
        m.set_data(data.astype(np.complex64))


def _stack_short(root):
    def edit(optics, particles):
        particles.loc[5, "rlnImageName"] = f"{2 * N_PER_GROUP + 1:06d}@{STACK}"
    edit_star(edit)


def _half_complex(root):
    write_mrc(HALF1, map_data(HALF1).astype(np.complex64))


def _half_identical(root):
    shutil.copyfile(HALF1, HALF2)


def _half_other_box(root):
    write_mrc(HALF2, np.zeros((BOX + 2,) * 3, np.float32) + 1)


def _half_pixel(root):
    with mrcfile.open(HALF2, mode="r+") as m:
        m.voxel_size = 1.7


def _half_nan(root):
    with mrcfile.open(HALF1, mode="r+") as m:
        m.data[1, 2, 3] = np.nan


def _half_not_cubic(root):
    write_mrc(HALF1, map_data(HALF1)[:40])


def _mask_values(value):
    def edit(root):
        write_mrc(MASK, np.full((BOX,) * 3, value, np.float32))
    return edit


def _mask_shape(root):
    write_mrc(MASK, np.ones((BOX - 8,) * 3, np.float32))


def _out_under_file(root):
    return {"out": f"{MAP}/sub", "job": f"{MAP}/sub/"}


def _out_symlink_loop(root):
    os.symlink("loop", "loop")
    return {"out": "loop/Out", "job": "loop/"}


def _out_overwrites_input(root):
    Path(OUT).mkdir()
    shutil.copyfile(STAR, f"{OUT}/particles.star")
    shutil.copyfile(CS, f"{OUT}/particles.cs")
    shutil.copyfile(STAR, f"{JOB}particles_csrefine.star")
    return {"star": f"{OUT}/particles.star", "star_relion": f"{JOB}particles_csrefine.star",
            "cs": f"{OUT}/particles.cs"}


def _out_locked(root):
    Path(OUT).mkdir()
    for d in (OUT, JOB):
        Path(d, ".csrefine.lock").write_text(f"{os.getppid()}\n")  # a live process, not us


def _out_newline(root):
    return {"out": "Out\nx", "job": "External/job\n9/"}


def _out_name_too_long(root):
    return {"out": "Deep/Er/" + "x" * 300, "job": "External/" + "x" * 300 + "/"}


def _job_of_another_job(root):
    Path("Refine3D/job002", SUCCESS).touch()
    return {"job": "Refine3D/job002/"}


def _half_fifo(root):
    os.mkfifo("fifo.mrc")
    return {"half1": "fifo.mrc"}


def _cs_duplicate_uid(root):
    def fn(dset):
        uid = np.array(dset["uid"])
        uid[5] = uid[2]
        dset["uid"] = uid
    edit_cs(fn)


def _cs_path_outside(root):
    def fn(dset):
        dset["blob/path"] = np.array(["../outside/particles.mrcs"] * len(dset), dtype=object)
    edit_cs(fn)


def _cs_missing_field(root):
    edit_cs(lambda dset: dset.drop_fields(["ctf/df1_A"]))


@dataclass
class Case:
    name: str
    edit: Callable | None
    expect: tuple  # substrings of the one stderr line (every path)
    paths: tuple = ("cli", "relion", "cs")
    expect_cs: tuple | None = None  # for the cs path, if it differs
    marker: str | None = FAILURE  # the External job's marker
    extra: dict = field(default_factory=dict)  # option -> value (both spellings)


ALL, STAR_ONLY, CS_ONLY = ("cli", "relion", "cs"), ("cli", "relion"), ("cs",)
CASES = [
    Case("star_missing", remove(STAR), (STAR, "not found"), STAR_ONLY),
    Case("star_is_directory", _star_is_directory, ("dir.star", "is a directory"), STAR_ONLY),
    Case("star_is_device", _star_is_device, ("zero.star", "not a regular file"), STAR_ONLY),
    Case("star_empty", _star_bytes(b""), (STAR,), STAR_ONLY),
    Case("star_binary", _star_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4000,
                                                                             dtype=np.uint8))),
         (STAR,), STAR_ONLY),
    Case("star_no_optics", _drop_block("optics"), (STAR, "data_optics"), STAR_ONLY),
    Case("star_no_particles", _drop_block("particles"), (STAR, "data_particles"), STAR_ONLY),
    Case("star_missing_column", lambda r: edit_star(lambda o, p: p.pop("rlnAnglePsi")),
         (STAR, "_rlnAnglePsi"), STAR_ONLY),
    Case("star_nan_angle", set_particle("rlnAngleRot", 7, "nan"), (STAR, "_rlnAngleRot", "nan", "row 8"),
         STAR_ONLY),
    Case("star_text_defocus", set_particle("rlnDefocusU", 2, "abc"), (STAR, "_rlnDefocusU", "abc"),
         STAR_ONLY),
    Case("star_duplicate_optics", lambda r: edit_star(_duplicate_optics),
         (STAR, "optics group 1", "_rlnOpticsGroup"), STAR_ONLY),
    Case("star_fractional_group", set_particle("rlnOpticsGroup", 3, "1.5"),
         (STAR, "_rlnOpticsGroup", "1.5", "row 4"), STAR_ONLY),
    Case("star_fractional_subset", set_particle("rlnRandomSubset", 3, "1.5"),
         (STAR, "_rlnRandomSubset", "1.5"), STAR_ONLY),
    Case("star_subset_3", set_particle("rlnRandomSubset", 3, 3), (STAR, "_rlnRandomSubset", "3"),
         STAR_ONLY),
    Case("star_unknown_group", set_particle("rlnOpticsGroup", 0, 7), (STAR, "optics group 7"),
         STAR_ONLY),
    Case("star_voltage_0", set_optics("rlnVoltage", 0), (STAR, "_rlnVoltage", "optics group 1", " 0"),
         STAR_ONLY),
    Case("star_voltage_absurd", set_optics("rlnVoltage", 300000), (STAR, "_rlnVoltage", "300000"),
         STAR_ONLY),
    Case("star_amplitude_1_5", set_optics("rlnAmplitudeContrast", 1.5),
         (STAR, "_rlnAmplitudeContrast", "1.5"), STAR_ONLY),
    Case("star_cs_nan", set_optics("rlnSphericalAberration", "nan"),
         (STAR, "_rlnSphericalAberration", "nan"), STAR_ONLY),
    Case("star_pixel_0", set_optics("rlnImagePixelSize", 0), (STAR, "_rlnImagePixelSize", " 0"),
         STAR_ONLY),
    Case("star_pixel_negative", set_optics("rlnImagePixelSize", -1.6),
         (STAR, "_rlnImagePixelSize", "-1.6"), STAR_ONLY),
    Case("star_box_mismatch", lambda r: edit_star(lambda o, p: o.__setitem__("rlnImageSize", 96)),
         (STACK, "96"), STAR_ONLY),
    Case("star_image_name_no_at", set_particle("rlnImageName", 1, "particles.mrcs"),
         (STAR, "_rlnImageName", "row 2"), STAR_ONLY),
    Case("star_image_number_0", set_particle("rlnImageName", 1, f"0@{STACK}"),
         (STAR, "_rlnImageName", "row 2"), STAR_ONLY),
    Case("star_premultiplied", lambda r: edit_star(
        lambda o, p: o.__setitem__("rlnCtfDataAreCtfPremultiplied", 1)),
         (STAR, "_rlnCtfDataAreCtfPremultiplied"), STAR_ONLY),
    Case("stack_missing", remove(STACK), (STACK, "not found")),
    Case("stack_truncated", lambda r: truncate(STACK), (STACK, "truncated")),
    Case("stack_garbage_header", lambda r: set_header(STACK, 0, 0, 0, fill=0xFF), (STACK, "mode")),
    Case("stack_huge_header", lambda r: set_header(STACK, 100000, 100000, 100000),
         (STACK, "100000 x 100000 x 100000")),
    Case("stack_complex", _stack_complex, (STACK, "complex")),
    Case("stack_nan", _stack_nan, (STACK, "image 5", "NaN")),
    Case("stack_short", _stack_short, (STACK, "image 301", "holds 300"), STAR_ONLY),
    Case("half_missing", remove(HALF1), (HALF1, "not found")),
    Case("half_complex", _half_complex, (HALF1, "complex")),
    Case("half_identical", _half_identical, (HALF2, "identical", HALF1)),
    Case("half_shape", _half_other_box, (HALF2, "shape")),
    Case("half_pixel", _half_pixel, (HALF2, "1.7000", "1.6000")),
    Case("half_nan", _half_nan, (HALF1, "NaN")),
    Case("half_not_cubic", _half_not_cubic, (HALF1, "cubic")),
    Case("half_huge_header", lambda r: set_header(HALF1, 100000, 100000, 100000),
         (HALF1, "100000 x 100000 x 100000")),
    Case("mask_zero", _mask_values(0.0), (MASK, "no positive value")),
    Case("mask_negative", _mask_values(-1.0), (MASK, "no positive value")),
    Case("mask_shape", _mask_shape, (MASK, "shape")),
    Case("option_low_inf", None, ("resolution_low_A", "inf"), extra={"resolution_low_A": "inf"}),
    Case("option_band_swapped", None, ("resolution_high_A", "20", "3.5"),
         extra={"resolution_low_A": "3.5", "resolution_high_A": "20"}),
    Case("option_cs_search_nan", None, ("cs_search_mm", "nan"), extra={"cs_search_mm": "nan"}),
    Case("option_threads_0", None, ("threads", "0"), extra={"j": "0"}),
    Case("out_under_file", _out_under_file, ("sub", "not a directory"), marker=None),
    Case("out_symlink_loop", _out_symlink_loop, ("loop", "symbolic link"), marker=None),
    Case("out_overwrites_input", _out_overwrites_input, ("would be overwritten",)),
    Case("out_locked", _out_locked, ("another csrefine job", f"PID {os.getppid()}"), marker=None),
    Case("out_newline", _out_newline, ("control character", "\\n"), marker=None),
    Case("out_name_too_long", _out_name_too_long, ("x" * 300, "too long"), marker=None),
    Case("job_of_another_job", _job_of_another_job, ("Refine3D/job002", "another job's outputs"),
         ("relion",), marker=None),
    Case("job_of_another_job_bad_option", _job_of_another_job, ("subsets", "1"), ("relion",),
         marker=None, extra={"subsets": "1"}),
    Case("half_fifo", _half_fifo, ("fifo.mrc", "not a regular file")),
    Case("cs_missing", remove(CS), (CS, "not found"), CS_ONLY),
    Case("cs_garbage", lambda r: Path(CS).write_bytes(b"\x93NUMPY garbage" * 50), (CS, "not a readable"),
         CS_ONLY),
    Case("cs_float_idx", retype_cs("blob/idx", "<f8", lambda v: v.astype(np.float64) + 0.5),
         (CS, "blob/idx", "float64"), CS_ONLY),
    Case("cs_int_pose", retype_cs("alignments3D/pose", "<i4", lambda v: np.round(v).astype(np.int32)),
         (CS, "alignments3D/pose", "int32"), CS_ONLY),
    Case("cs_string_cs", retype_cs("ctf/cs_mm", "O", lambda v: np.array([str(x) for x in v], dtype=object)),
         (CS, "ctf/cs_mm", "object"), CS_ONLY),
    Case("cs_voltage_0", set_cs("ctf/accel_kv", 0), (CS, "ctf/accel_kv", "exposure group 0", " 0"),
         CS_ONLY),
    Case("cs_amplitude_1_5", set_cs("ctf/amp_contrast", 1.5), (CS, "ctf/amp_contrast", "1.5"), CS_ONLY),
    Case("cs_path_outside", _cs_path_outside, (CS, "blob/path", "../outside"), CS_ONLY),
    Case("cs_split_2", set_cs("alignments3D/split", 2), (CS, "alignments3D/split", "2"), CS_ONLY),
    Case("cs_missing_field", _cs_missing_field, (CS, "ctf/df1_A"), CS_ONLY),
    Case("cs_duplicate_uid", _cs_duplicate_uid, (CS, "uid", "twice"), CS_ONLY),
]
RUNS = [pytest.param(case, path, id=f"{case.name}-{path}") for case in CASES for path in case.paths]


def _flag(name, style):
    return "--" + (name.replace("_", "-") if style == "cli" else name)


def command(path: str, o: dict, extra: dict) -> tuple[Callable, list[str]]:
    """The entry point and its arguments for ``path`` with the inputs in ``o``."""
    options = {**FAST, **extra}
    if path == "relion":
        argv = ["--o", o["job"], "--in_parts", o.get("star_relion", o["star"]), "--in_3dref", MAP,
                "--half1", o["half1"], "--half2", o["half2"], "--in_mask", o["mask"]]
        argv += [x for k, v in options.items() for x in (_flag(k, "relion"), v)]
        return relion_main, argv
    particles = o["cs"] if path == "cs" else o["star"]
    argv = ["refine", "--particles", particles, "--half-maps", o["half1"], o["half2"],
            "--mask", o["mask"], "--out", o["out"]]
    if path == "cs":
        argv += ["--project-dir", "."]
    argv += [x for k, v in options.items() for x in (_flag(k, "cli"), v)]
    return cli_main, argv


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err and "np.float64" not in err, err
    return lines[0]


@pytest.mark.parametrize("case, path", RUNS)
def test_bad_input(project, capsys, case: Case, path: str):
    o = {"star": STAR, "half1": HALF1, "half2": HALF2, "mask": MASK, "out": OUT, "job": JOB, "cs": CS}
    changed = case.edit(project) if case.edit is not None else None
    if isinstance(changed, dict):  # the case names other inputs or outputs
        o.update(changed)
    before = snapshot(project)
    fn, argv = command(path, o, case.extra)
    capsys.readouterr()
    t0 = time.monotonic()
    code = fn(argv)
    elapsed = time.monotonic() - t0
    line = one_error_line(capsys.readouterr().err)
    assert code == 2, (code, line)
    expected = case.expect_cs if (path == "cs" and case.expect_cs) else case.expect
    for text in expected:
        assert text in line, f"{text!r} not in {line!r}"
    after = snapshot(project)
    marker = f"{o['job'].rstrip('/')}/{case.marker}" if (path == "relion" and case.marker) else None
    if marker is not None:
        assert after.pop(marker, None) == ("file", b""), f"no {case.marker}"
    assert after == before, f"changed: {sorted(set(after) ^ set(before))}"
    assert elapsed < 5, f"found late ({elapsed:.1f} s)"


# ------------------------------------------------------------------------------ signals
def _wait_for_accumulation(proc, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            pytest.fail(f"the run ended before the signal: {proc.stderr.read()}")
        if "particles/s" in line:
            return
    pytest.fail("the run never started accumulating")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("path", ["cli", "relion"])
def test_signal_stops_cleanly(project, path, signum):
    """A signal mid-run: exit 128+N, one line, ABORTED marker (RELION), nothing written."""
    o = {"star": STAR, "half1": HALF1, "half2": HALF2, "mask": MASK, "out": OUT, "job": JOB, "cs": CS}
    _, argv = command(path, o, {"batch_size": "4"})
    module = "csrefine.relion.entry" if path == "relion" else "csrefine.cli"
    before = snapshot(project)
    proc = subprocess.Popen([sys.executable, "-m", module, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_accumulation(proc)
        t0 = time.monotonic()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - t0 < 10
    assert proc.returncode == 128 + signum
    line = one_error_line(err)
    assert signal.Signals(signum).name in line
    after = snapshot(project)
    if path == "relion":
        assert after.pop(f"{JOB.rstrip('/')}/{ABORTED}", None) == ("file", b"")
    assert after == before, f"changed: {sorted(set(after) ^ set(before))}"


# ------------------------------------------------------------------------------ full disk
@pytest.fixture()
def full_disk(tmp_path):
    """A 1 MiB tmpfs (root can mount one), unmounted afterwards; skipped where it cannot."""
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip() or res.returncode}): the "
                    f"full-disk case was SKIPPED, not passed")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("path", ["cli", "relion", "cs"])
def test_full_disk_is_refused_before_the_work(project, full_disk, capsys, path):
    o = {"star": STAR, "half1": HALF1, "half2": HALF2, "mask": MASK, "cs": CS,
         "out": str(full_disk / "Out"), "job": str(full_disk / "job") + "/"}
    (full_disk / "job").mkdir()
    before = snapshot(project)
    fn, argv = command(path, o, {})
    code = fn(argv)
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "not enough free disk space" in line and str(full_disk) in line
    assert snapshot(project) == before
    left = sorted(p.name for p in full_disk.rglob("*"))
    assert left == (["RELION_JOB_EXIT_FAILURE", "job"] if path == "relion" else ["job"]), left


@pytest.mark.parametrize("path", ["cli", "relion", "cs"])
def test_no_space_while_writing(project, capsys, monkeypatch, path):
    """ENOSPC from the last output written: one line, nothing in place, staging removed."""
    import csrefine.outputs

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(csrefine.outputs, "write_pdf", no_space)
    o = {"star": STAR, "half1": HALF1, "half2": HALF2, "mask": MASK, "out": OUT, "job": JOB, "cs": CS}
    before = snapshot(project)
    fn, argv = command(path, o, {})
    code = fn(argv)
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "No space left on device" in line
    after = snapshot(project)
    if path == "relion":
        assert after.pop(f"{JOB.rstrip('/')}/{FAILURE}", None) == ("file", b"")
    assert after == before, f"changed: {sorted(set(after) ^ set(before))}"


# ------------------------------------------------------------------------------ start-up, lock, CRLF
def test_import_failure_still_writes_the_failure_marker(project, capsys, monkeypatch):
    from csrefine.relion.entry import main as entry_main

    monkeypatch.setitem(sys.modules, "csrefine.relion.external_job", None)  # import fails
    assert entry_main(["--o", JOB, "--in_parts", STAR]) != 0
    line = one_error_line(capsys.readouterr().err)
    assert "cannot start" in line
    assert Path(JOB, FAILURE).is_file()


def test_stale_lock_is_taken_over(tmp_path):
    from csrefine.io_atomic import LOCK_NAME, acquire_lock, release_lock

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its PID now names no process
    (tmp_path / LOCK_NAME).write_text(f"{dead.pid}\n")
    acquire_lock(tmp_path)
    assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    release_lock(tmp_path)
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_of_a_running_job_is_refused_with_its_host_and_start(tmp_path):
    from csrefine.errors import OutputError
    from csrefine.io_atomic import LOCK_NAME, LockOwner, acquire_lock, process_start_ticks

    running = subprocess.Popen(["sleep", "30"])
    try:
        owner = LockOwner(running.pid, socket.gethostname(), process_start_ticks(running.pid),
                          "2026-01-02T03:04:05+00:00")
        (tmp_path / LOCK_NAME).write_text(owner.text())
        with pytest.raises(OutputError, match=f"PID {running.pid} on {socket.gethostname()}"):
            acquire_lock(tmp_path)
        assert (tmp_path / LOCK_NAME).read_text() == owner.text()
    finally:
        running.kill()
        running.wait()


def test_a_reused_pid_does_not_hold_the_job_and_a_killed_runs_staging_is_removed(project, capsys):
    """The lock of a job killed with SIGKILL names a PID that a live process (started later)
    has now: the External job takes the lock over, removes the killed run's staging directory
    and its partial file, succeeds and leaves exactly one marker."""
    from csrefine.io_atomic import LOCK_NAME

    o = {"star": STAR, "half1": HALF1, "half2": HALF2, "mask": MASK, "out": OUT, "job": JOB, "cs": CS}
    Path(JOB).mkdir(parents=True, exist_ok=True)
    Path(JOB, FAILURE).touch()  # the killed attempt's pipeliner marked it
    staging = Path(JOB, ".csrefine-staging-killed")
    staging.mkdir()
    (staging / "particles_csrefine.star").write_text("partial")
    reused = subprocess.Popen(["sleep", "60"])
    try:
        Path(JOB, LOCK_NAME).write_text(f"{reused.pid} {socket.gethostname()} 1 "
                                        f"2026-01-02T03:04:05+00:00\n")
        fn, argv = command("relion", o, {})
        assert fn(argv) == 0, capsys.readouterr().err
    finally:
        reused.kill()
        reused.wait()
    left = sorted(p.name for p in Path(JOB).iterdir())
    assert left == ["RELION_JOB_EXIT_SUCCESS", "RELION_OUTPUT_NODES.star", "csrefine.json",
                    "logfile.pdf", "particles_csrefine.star"], left


def test_crlf_star_is_read_and_the_output_has_lf(project):
    """RELION 3.1.3 reads no table of a file with CRLF line ends: the output has LF ends."""
    text = Path(STAR).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    Path(STAR).write_bytes(text)
    assert cli_main(["refine", "--particles", STAR, "--half-maps", HALF1, HALF2, "--out", OUT,
                     "--min-particles", "10", "--device", "cpu", "--resolution-high-A", "4"]) == 0
    out = Path(OUT, "particles.star").read_bytes()
    assert b"\r" not in out and out.count(b"\n") == text.count(b"\r\n")
    assert sorted(p.name for p in Path(OUT).iterdir()) == ["csrefine.json", "logfile.pdf",
                                                           "particles.star"]
