"""The README's history example: six simulated data sets from one "instrument" (true Cs 2.75 mm,
nominal 2.7 mm, 300 kV), one of them at a magnification whose true pixel size is 2.5% smaller
than its label. Writes DIR/dsN/ projects and refines each with ``csrefine refine`` into
DIR/dsN/out/ (nothing is recorded here; the README records them with ``csrefine history``).

    python docs/history_example.py DIR
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mrcfile
import starfile

from csrefine.atomic_map import PACKAGED_MODEL
from csrefine.relion.example import make_example

CS_TRUE_MM = 2.75
CS_NOMINAL_MM = 2.7
PARTICLES = 800
#: (name, nominal pixel size A, true pixel size A, box)
DATA_SETS = (
    ("ds1", 1.6, 1.6, 64), ("ds2", 1.6, 1.6, 64), ("ds3", 1.6, 1.6, 64),
    ("ds4", 1.3, 1.3, 80), ("ds5", 1.3, 1.3 * 0.975, 80), ("ds6", 1.6, 1.6, 64),
)


def relabel_pixel_size(root: Path, pixel_size_A: float) -> None:
    """State ``pixel_size_A`` in the optics table and the map/stack headers (the images were
    made at another, true pixel size: a miscalibrated magnification)."""
    star_path = root / "Refine3D/job002/run_data.star"
    star = starfile.read(star_path, always_dict=True)
    star["optics"]["rlnImagePixelSize"] = pixel_size_A
    starfile.write(star, star_path, overwrite=True)
    for path in root.rglob("*.mrc*"):
        with mrcfile.open(path, mode="r+") as m:
            m.voxel_size = pixel_size_A


def main(directory: str) -> None:
    base = Path(directory)
    for seed, (name, p_nominal, p_true, box) in enumerate(DATA_SETS, start=11):
        root = base / name
        make_example(root, n_per_group=(PARTICLES,), cs_true_mm=(CS_TRUE_MM,),
                     cs_nominal_mm=CS_NOMINAL_MM, box=box, pixel_size_A=p_true, seed=seed,
                     model_path=PACKAGED_MODEL)
        if p_true != p_nominal:
            relabel_pixel_size(root, p_nominal)
        job = "Refine3D/job002"
        subprocess.run(["csrefine", "refine", "--particles", f"{job}/run_data.star",
                        "--half-maps", f"{job}/run_half1_class001_unfil.mrc",
                        f"{job}/run_half2_class001_unfil.mrc",
                        "--mask", "MaskCreate/job003/mask.mrc", "--out", "out", "--j", "1"],
                       cwd=root, check=True, stdout=subprocess.DEVNULL)
        print(f"{name}: refined into {root / 'out'}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
