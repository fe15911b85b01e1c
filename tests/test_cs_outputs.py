"""The .cs files csrefine writes keep every field of their input (cryoSPARC's Dataset.load)."""

from types import SimpleNamespace

import numpy as np
from cryosparc.dataset import Dataset

from csrefine.cryosparc.convert import PARTICLE_FIELDS_CS
from csrefine.cryosparc.offline import write_dataset

EXTRA_FIELDS = [("location/micrograph_path", "O"), ("location/center_x_frac", "<f4"),
                ("pick_stats/ncc_score", "<f4"), ("alignments2D/pose", "<f4"),
                ("blob/import_sig", "<u8")]


def _dataset(n=6) -> Dataset:
    rng = np.random.default_rng(3)
    fields = PARTICLE_FIELDS_CS + [f for f in EXTRA_FIELDS if f[0] not in
                                   {name for name, *_ in PARTICLE_FIELDS_CS}]
    dset = Dataset.allocate(n, fields)
    for name in dset.fields():
        if name == "uid":
            continue
        column = np.asarray(dset[name])
        if column.dtype == object:
            dset[name] = np.array([f"J1/mic{i}.mrc" for i in range(n)], dtype=object)
        else:
            dset[name] = rng.uniform(1, 100, column.shape).astype(column.dtype)
    dset["ctf/exp_group_id"] = np.arange(n) % 2
    return dset


def test_the_refined_dataset_keeps_every_input_field(tmp_path):
    dset = _dataset()
    group = SimpleNamespace(refined=True, optics_group=2, cs_refined_mm=2.9, defocus_offset_A=50.0)
    result = SimpleNamespace(inputs=SimpleNamespace(source=dset),
                             refinement=SimpleNamespace(groups=[group]))
    write_dataset(tmp_path / "particles.cs", result)
    out = Dataset.load(tmp_path / "particles.cs")
    assert out.fields() == dset.fields() and len(out) == len(dset)
    changed = {"ctf/cs_mm", "ctf/df1_A", "ctf/df2_A"}
    for name in dset.fields():
        if name not in changed:
            np.testing.assert_array_equal(out[name], dset[name], err_msg=name)
    second = np.asarray(dset["ctf/exp_group_id"]) == 1
    np.testing.assert_allclose(out["ctf/cs_mm"], np.where(second, 2.9, dset["ctf/cs_mm"]),
                               rtol=1e-6)
    for name in ("ctf/df1_A", "ctf/df2_A"):
        np.testing.assert_allclose(out[name], np.where(second, 50.0, 0.0) + dset[name], atol=1e-2)
