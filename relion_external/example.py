"""The bundled example: a small simulated RELION project (no download needed).

``csrefine example DIR`` writes, under DIR:
  Extract/job001/particles.mrcs     simulated particle images (csrefine's forward model)
  Refine3D/job002/run_data.star     particle STAR (optics + particles tables) stating the
                                    *nominal* Cs, while the images were made with the true Cs
  Refine3D/job002/run_half{1,2}_class001_unfil.mrc
                                    half maps reconstructed from the particles' half sets
                                    (rlnRandomSubset) with the nominal CTF, as a refinement gives
                                    them; run_class001.mrc their average
  MaskCreate/job003/mask.mrc        a soft spherical mask
  Refine3D/job002/model_docked.cif  the atomic model docked in the map (when a model was used)
  default_pipeline.star             the jobs above as RELION 3.1's pipeline, so that RELION's GUI
                                    opens the directory as a project and an External job
                                    (csrefine-relion) can take its nodes as inputs
The map comes from the atomic model shipped with the package (PDB entry 1BD2, public-domain PDB
data, ``plugin/data/1BD2.cif.gz``), or from a pseudo-atomic model generated here if it is absent.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import gemmi
import numpy as np

from csrefine.atomic_map import PACKAGED_MODEL, docked_structure
from csrefine.fsc import default_mask
from csrefine.images import write_map, write_stack
from csrefine.model import OpticsGroup, Particles
from csrefine.reconstruct import reconstruct_half_maps
from csrefine.simulate import model_map, random_particles, simulate_images

from .star_write import image_names, write_new_star


def make_example(root, *, n_per_group=(1500, 1500), cs_true_mm=(3.0, 2.7), cs_nominal_mm=2.7,
                 box=88, pixel_size_A=1.6, noise_sigma=1.0, half_map_noise=0.002, seed=0,
                 model_path: Path | None = None, voltage_kv=300.0,
                 half_maps_from_particles: bool = False) -> dict:
    """Write the example project under ``root``; returns its paths and the truth.

    half_maps_from_particles : reconstruct the half maps from the particles' own half sets with
    the nominal CTF (:func:`csrefine.reconstruct.reconstruct_half_maps`), as a refinement gives
    them; the full map is their average. Otherwise the half maps are the model's map plus white
    noise of ``half_map_noise`` times its maximum (no trace of the particles' noise), and the
    full map is the model's map."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    vol = model_map(box, pixel_size_A, rng, model_path)
    parts, images, groups = [], [], []
    for g, (n, cs_true) in enumerate(zip(n_per_group, cs_true_mm), start=1):
        truth = OpticsGroup(g, f"opticsGroup{g}", voltage_kv, cs_true, 0.1, pixel_size_A, box)
        p = random_particles(n, rng, optics_group=g)
        images.append(simulate_images(vol, truth, p, noise_sigma, rng))
        parts.append(p)
        groups.append(OpticsGroup(g, truth.name, voltage_kv, cs_nominal_mm, 0.1, pixel_size_A, box))
    particles = Particles(**{f: np.concatenate([getattr(p, f) for p in parts])
                             for f in parts[0].__dataclass_fields__})
    for d in ("Extract/job001", "Refine3D/job002", "MaskCreate/job003"):
        (root / d).mkdir(parents=True, exist_ok=True)
    stack = "Extract/job001/particles.mrcs"
    images = np.concatenate(images)
    write_stack(root / stack, images, pixel_size_A)
    star = root / "Refine3D/job002/run_data.star"
    write_new_star(star, groups, particles, image_names(stack, range(len(particles))))
    if half_maps_from_particles:
        halves = reconstruct_half_maps({g.optics_group: g for g in groups}, particles, images)
        full = 0.5 * (halves[0] + halves[1])
    else:
        halves = [vol + rng.normal(0, half_map_noise * float(vol.max()), vol.shape).astype(
            np.float32) for _ in range(2)]
        full = vol
    for h, half in enumerate(halves, start=1):
        write_map(root / f"Refine3D/job002/run_half{h}_class001_unfil.mrc", half, pixel_size_A)
    write_map(root / "Refine3D/job002/run_class001.mrc", full, pixel_size_A)
    write_map(root / "MaskCreate/job003/mask.mrc", default_mask(box), pixel_size_A)
    model_out = None
    if model_path is not None and Path(model_path).is_file():
        model_out = root / "Refine3D/job002/model_docked.cif"
        docked = docked_structure(gemmi.read_structure(str(model_path)), box, pixel_size_A)
        docked.make_mmcif_document().write_file(str(model_out))
    write_pipeline(root / "default_pipeline.star")
    return {"model": model_out,"root": root, "star": star, "map": root / "Refine3D/job002/run_class001.mrc",
            "half1": root / "Refine3D/job002/run_half1_class001_unfil.mrc",
            "half2": root / "Refine3D/job002/run_half2_class001_unfil.mrc",
            "mask": root / "MaskCreate/job003/mask.mrc", "cs_true_mm": list(cs_true_mm),
            "volume": vol}


#: RELION 3.1's process types (src/pipeline_jobs.h) and node types of the example's jobs.
PROC_EXTRACT, PROC_REFINE3D, PROC_MASKCREATE = 5, 10, 12
NODE_PARTICLES, NODE_3DREF, NODE_MASK, NODE_HALFMAP = 3, 6, 7, 10
PROCESS_FINISHED = 2
EXAMPLE_JOBS = (("Extract/job001/", PROC_EXTRACT, ()),
                ("Refine3D/job002/", PROC_REFINE3D,
                 (("run_data.star", NODE_PARTICLES), ("run_class001.mrc", NODE_3DREF),
                  ("run_half1_class001_unfil.mrc", NODE_HALFMAP))),
                ("MaskCreate/job003/", PROC_MASKCREATE, (("mask.mrc", NODE_MASK),)))


def write_pipeline(path) -> None:
    """default_pipeline.star (RELION 3.1 format) listing the example's finished jobs, their
    output nodes and the edge Refine3D map -> MaskCreate."""
    lines = ["", "# version 30001", "", "data_pipeline_general", "",
             f"_rlnPipeLineJobCounter {len(EXAMPLE_JOBS) + 1}", "", "# version 30001", "",
             "data_pipeline_processes", "", "loop_", "_rlnPipeLineProcessName #1",
             "_rlnPipeLineProcessAlias #2", "_rlnPipeLineProcessType #3",
             "_rlnPipeLineProcessStatus #4"]
    lines += [f"{job} None {kind} {PROCESS_FINISHED}" for job, kind, _ in EXAMPLE_JOBS]
    lines += ["", "# version 30001", "", "data_pipeline_nodes", "", "loop_",
              "_rlnPipeLineNodeName #1", "_rlnPipeLineNodeType #2"]
    outputs = [(job, job + name, kind) for job, _, nodes in EXAMPLE_JOBS for name, kind in nodes]
    lines += [f"{node} {kind}" for _, node, kind in outputs]
    lines += ["", "# version 30001", "", "data_pipeline_input_edges", "", "loop_",
              "_rlnPipeLineEdgeFromNode #1", "_rlnPipeLineEdgeProcess #2",
              "Refine3D/job002/run_class001.mrc MaskCreate/job003/"]
    lines += ["", "# version 30001", "", "data_pipeline_output_edges", "", "loop_",
              "_rlnPipeLineEdgeProcess #1", "_rlnPipeLineEdgeToNode #2"]
    lines += [f"{job} {node}" for job, node, _ in outputs]
    Path(path).write_text("\n".join(lines) + "\n\n")


#: ``csrefine example``: a 200 kV microscope (nominal Cs 2.7 mm, as on a Glacios) whose first
#: optics group has a true Cs of 3.0 mm, which matters at the data's resolution, and whose second
#: group's Cs is right. The half maps are reconstructed from the particles' half sets (1,500
#: particles each, the nominal CTF): their FSC crosses 0.143 at 2.62 Å, before Nyquist (2.4 Å).
SHOWCASE = dict(box=96, pixel_size_A=1.2, voltage_kv=200.0, noise_sigma=3.0,
                half_maps_from_particles=True)


def write_example(directory, model=None) -> dict:
    """``csrefine example DIR``: the example project, its map from ``model`` (default: the
    packaged 1BD2 model); prints where it is and the truth."""
    default_model = PACKAGED_MODEL if PACKAGED_MODEL.is_file() else None
    info = make_example(directory, model_path=Path(model) if model else default_model,
                        **SHOWCASE)
    rewrite_as_relion(info["star"])  # as a RELION user's project has it
    print(f"example project in {info['root']}: true Cs per optics group {info['cs_true_mm']} mm, "
          f"nominal 2.7 mm in {Path(info['star']).relative_to(info['root'])}")
    return info


def rewrite_as_relion(star: Path) -> bool:
    """Rewrite ``star`` with ``relion_star_handler`` where RELION is installed, so that the
    example's particle STAR has the layout RELION's own programs write (right-aligned columns,
    rows beginning with spaces, RELION's precision); returns whether it did. Without RELION the
    file stays as :func:`csrefine.relion.star_write.write_new_star` wrote it."""
    if shutil.which("relion_star_handler") is None:
        return False
    out = star.with_name(star.stem + "_relion.star")
    subprocess.run(["relion_star_handler", "--i", star.name, "--o", out.name], cwd=star.parent,
                   check=True, capture_output=True, timeout=600)
    out.replace(star)
    return True
