"""``csrefine-cryosparc``: refine Cs per exposure group as a cryoSPARC External job.

    csrefine-cryosparc --project P3 --workspace W2 --particles J42.particles --volume J42.volume \\
        [--mask J43.mask] [--title "Cs refinement"] [--kmin-A 20] [--kmax-A X] [--subsets 3] [--j N]

Connection (cryosparc-tools 5.x): the base URL comes from ``--url`` or ``CRYOSPARC_BASE_URL``; the
login from ``CRYOSPARC_EMAIL`` / ``CRYOSPARC_PASSWORD`` when both are set, otherwise from a token
saved by ``python -m cryosparc.tools login --url URL``. Credentials are never taken from the
command line and never logged.

The job reads particle images and half maps from the project directory (``project.dir``, or
``--project-dir`` where this machine mounts it elsewhere), memory-mapping the stacks, and saves one
output, ``particles``, that passes the input through and replaces the ``ctf`` slot (new
``ctf/cs_mm`` per exposure group and ``ctf/df1_A``/``df2_A`` shifted by the refined defocus
offset). Any error inside the job marks it failed with the message in the event log; nothing is
saved then.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from cryosparc.tools import CryoSPARC

from csrefine import __version__
from csrefine.atomic_map import read_model
from csrefine.errors import InputError
from csrefine.job import (
    EXIT_FAILED,
    EXIT_OK,
    Job,
    OneLineParser,
    add_job_arguments,
    console_exit,
    history_request,
    run_job,
    say,
)
from csrefine.options import options_from_namespace
from csrefine.outputs import report_pages
from csrefine.results import RefinementInputs, RunResult

from .convert import resolve_blob_paths, updated_dataset
from .offline import dataset_inputs

TITLE = "Cs refinement"
#: The job's inputs: their slots and titles.
INPUTS = {"particles": (["blob", "ctf", "alignments3D"], "Particles"),
          "volume": (["map_half_A", "map_half_B"], "Volume (half maps)"),
          "mask": (["mask"], "FSC mask")}


def parse_source(text: str, option: str) -> tuple[str, str]:
    """'J42.particles' -> ('J42', 'particles')."""
    m = re.fullmatch(r"(J\d+)\.([A-Za-z][A-Za-z0-9_]*)", text or "")
    if not m:
        raise InputError(f"{option} {text!r}: expected JOB.OUTPUT, e.g. J42.particles")
    return m.group(1), m.group(2)


PROG = "csrefine-cryosparc"
#: Options of the other entry points that this one does not offer (the half maps can be rebuilt
#: only by cryoSPARC's own reconstruction, a separate job: see --queue-reconstruction).
NOT_OFFERED = ("rounds", "keep_round_maps")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Refine Cs per exposure group as a cryoSPARC External job")
    p.add_argument("--url", default=None,
                   help="cryoSPARC base URL (default: $CRYOSPARC_BASE_URL), e.g. http://host:39000")
    p.add_argument("--project", required=True, help="project UID, e.g. P3")
    p.add_argument("--workspace", required=True, help="workspace UID for the new job, e.g. W2")
    p.add_argument("--particles", required=True,
                   help="particles with 3D alignments: JOB.OUTPUT, e.g. J42.particles")
    p.add_argument("--volume", required=True,
                   help="volume with half maps (map_half_A/B): JOB.OUTPUT, e.g. J42.volume")
    p.add_argument("--mask", default=None, help="optional mask for the half-map FSC: JOB.OUTPUT")
    p.add_argument("--title", default=TITLE, help=f"job title (default {TITLE!r})")
    p.add_argument("--project-dir", default=None,
                   help="where this machine sees the project directory (default: as cryoSPARC reports it)")
    p.add_argument("--model", default=None,
                   help="atomic model (mmCIF/PDB) docked in the map: calibrate the pixel size "
                        "against it and say whether the Cs departure is pixel size or Cs")
    p.add_argument("--queue-reconstruction", action="store_true",
                   help="after the job completes, create and queue a Homogeneous Reconstruction "
                        "Only job (homo_reconstruct) on its particles (and --mask): its half "
                        "maps, rebuilt with the refined Cs, measure the FSC before/after and can "
                        "be given to a second csrefine-cryosparc run (--volume JNN.volume)")
    p.add_argument("--lane", default=None,
                   help="lane for --queue-reconstruction (default: cryoSPARC's, the master)")
    p.add_argument("--version", action="version", version=f"csrefine {__version__}")
    add_job_arguments(p, style="cli", exclude=NOT_OFFERED)
    return p


def connect(url: str | None = None):
    """A logged-in ``cryosparc.tools.CryoSPARC`` (credentials from the environment or a saved
    token; never from arguments)."""
    base_url = url or os.environ.get("CRYOSPARC_BASE_URL")
    if not base_url:
        raise InputError("no cryoSPARC URL: give --url or set CRYOSPARC_BASE_URL")
    email = os.environ.get("CRYOSPARC_EMAIL") or None
    password = os.environ.get("CRYOSPARC_PASSWORD") or None
    if not email:
        password = None  # a password alone is useless; an email alone selects a saved token
    # host/base_port must be given as None: their defaults come from the environment and
    # cannot be combined with a base URL.
    try:
        return CryoSPARC(base_url, host=None, base_port=None, email=email, password=password)
    except Exception as exc:  # connection or login: cryosparc-tools' message, no secrets in it
        raise InputError(f"cannot connect to cryoSPARC at {base_url}: {exc}") from None


def check_source(project, job_uid: str, output: str, slots, what: str) -> None:
    """The source job must have ``output`` with ``slots``: clear messages before connecting."""
    source = project.find_job(job_uid)
    outputs = source.model.spec.outputs.root
    if output not in outputs:
        raise InputError(f"{what}: job {job_uid} has no output {output!r} "
                         f"(it has {', '.join(sorted(outputs)) or 'none'})")
    names = {r.name for r in outputs[output].results}
    missing = [s for s in slots if s not in names]
    if missing:
        hint = (" (connect the volume of a refinement job, which carries both half maps)"
                if what == "volume" else "")
        raise InputError(f"{what}: output {job_uid}.{output} lacks {', '.join(missing)}{hint}")


def _blob_path(dset, slot: str, project_dir: Path, what: str) -> Path:
    field = f"{slot}/path"
    if field not in dset.fields() or len(dset) == 0:
        raise InputError(f"{what}: no {slot} in the connected output")
    path = Path(resolve_blob_paths([dset[field][0]], project_dir, what=what, field=field)[0])
    if not path.is_file():
        raise InputError(f"{what}: {slot} file {path} not found (is the project directory "
                         f"mounted here? see --project-dir)")
    return path


def load_job_inputs(job, project, args, options, log) -> RefinementInputs:
    """The job's connected inputs (particles, volume, optional mask) and the optional model,
    read from the project directory into the core's inputs; non-zero higher-order CTF fields
    get the conventions the particles choose (decisions logged; ``options``: band, backend)."""
    project_dir = Path(args.project_dir) if args.project_dir else Path(str(project.dir))
    structure = read_model(args.model) if args.model else None
    particles = job.load_input("particles", INPUTS["particles"][0])
    volume = job.load_input("volume", INPUTS["volume"][0])
    log(f"{len(particles)} particles from {args.particles}; half maps from {args.volume}; "
        f"project directory {project_dir}")
    half_a = _blob_path(volume, "map_half_A", project_dir, "volume")
    half_b = _blob_path(volume, "map_half_B", project_dir, "volume")
    mask_path = None
    if args.mask:
        mask_path = _blob_path(job.load_input("mask", INPUTS["mask"][0]), "mask", project_dir, "mask")
    map_px = (float(volume["map_half_A/psize_A"][0]) if "map_half_A/psize_A" in volume.fields()
              else None)
    sources = {"particles": args.particles, "volume": args.volume, "mask": args.mask,
               "model": args.model, "project_dir": str(project_dir),
               "half_maps": [f"{args.volume} map_half_A ({half_a})",
                             f"{args.volume} map_half_B ({half_b})"]}
    inputs = dataset_inputs(particles, project_dir, (half_a, half_b), mask_path, structure,
                            sources, what=f"particles {args.particles}", options=options,
                            progress=log, map_pixel_size_A=map_px)
    for gid, g in sorted(inputs.groups.items()):
        log(f"exposure group {gid - 1}: {int(np.sum(inputs.particles.optics_group == gid))} "
            f"particles, nominal Cs {g.cs_mm:.3f} mm, {g.voltage_kv:.0f} kV, "
            f"{g.pixel_size_A:.4f} A/px")
    return inputs


class CryosparcJob:
    """A :class:`csrefine.run.Destination`: the cryoSPARC External job.

    ``open`` creates the job in the workspace, connects its inputs and marks it running
    (cryosparc-tools' ``job.run()``); ``write`` logs the report's pages (with their data) into
    the event log and saves the ``particles`` output (the input passed through, with a new
    ``ctf``);
    ``close`` marks the job completed, or failed with the error in its event log.
    """

    def __init__(self, cs, args):
        self.cs, self.args = cs, args
        self.project = self.job = None
        self.history_source: str | None = None
        self._running = ExitStack()

    def open(self) -> None:
        args = self.args
        sources = {what: parse_source(getattr(args, what), f"--{what}") for what in INPUTS
                   if what != "mask" or args.mask}
        self.project = self.cs.find_project(args.project)
        self.job = self.project.create_external_job(
            args.workspace, title=args.title, desc="csrefine: Cs refinement per exposure group")
        self.history_source = f"cryoSPARC {self.job.project_uid}-{self.job.uid}"
        self._running.enter_context(self.job.run())  # from here on, errors mark the job failed
        try:
            for what, (job_uid, output) in sources.items():
                slots, title = INPUTS[what]
                check_source(self.project, job_uid, output, slots, what)
                self.job.connect(what, job_uid, output, slots=slots, title=title)
        except BaseException as exc:  # the job exists: it is marked failed with the reason
            self.close(exc)
            raise

    def progress(self, text: str) -> None:
        """A line in the event log (progress lines updated in place)."""
        if "particles/s" in text:
            self.job.log(text, name="progress")
        else:
            self.job.log(text)

    def check(self, inputs: RefinementInputs) -> None:
        pass  # the outputs live in cryoSPARC's database: nothing to check here

    def write(self, result: RunResult, should_abort) -> None:
        refinement = result.refinement
        for title, fig, raw in report_pages(result):  # Figures outside pyplot: nothing to close
            self.job.log_plot(fig, title, formats=["png", "pdf"],
                              raw_data=json.dumps(raw, default=float), raw_data_format="json")
        particles = result.inputs.source
        new = updated_dataset(particles, refinement)
        out = self.job.add_output("particle", "particles", passthrough="particles",
                                  slots=["ctf"], alloc=particles)  # the input's rows and uids
        for field in out.fields():
            if field != "uid" and field in new.fields():
                out[field] = new[field]
        self.job.save_output("particles", out)
        refined = [g for g in refinement.groups if g.refined]
        self.job.log(f"saved particles with refined Cs for {len(refined)} of "
                     f"{len(refinement.groups)} exposure group(s)")

    def close(self, error: BaseException | None) -> None:
        if error is None:
            self._running.close()
            return
        if self.job is not None:
            self.job.log(f"csrefine: error: {error}", level="error")
        self._running.__exit__(type(error), error, error.__traceback__)


def cryosparc_job(cs, args, options) -> Job:
    """The refinement as a new External job on ``cs`` (a ``cryosparc.tools.CryoSPARC``)."""
    destination = CryosparcJob(cs, args)
    return Job(options, lambda: load_job_inputs(destination.job, destination.project, args,
                                                options, destination.progress),
               destination, history=history_request(args))


#: cryoSPARC's job type of Homogeneous Reconstruction Only, and its inputs.
RECONSTRUCT_JOB_TYPE = "homo_reconstruct"
RECONSTRUCT_TITLE = "csrefine: reconstruction with the refined Cs"


def queue_reconstruction(project, workspace: str, job_uid: str, mask: str | None = None,
                         lane: str | None = None):
    """Create a Homogeneous Reconstruction Only job on ``job_uid``'s ``particles`` output (and
    the mask ``JOB.OUTPUT``, if given) in ``workspace`` and queue it in ``lane``; returns it."""
    connections = {"particles": (job_uid, "particles")}
    if mask:
        connections["mask"] = parse_source(mask, "--mask")
    job = project.create_job(workspace, RECONSTRUCT_JOB_TYPE, connections=connections,
                             title=RECONSTRUCT_TITLE,
                             desc=f"Half maps rebuilt from {job_uid}.particles (Cs refined by "
                                  f"csrefine): compare their FSC with the original refinement's")
    job.queue(lane)
    return job


def main(argv=None) -> int:
    """``csrefine-cryosparc``; returns the exit status (:mod:`csrefine.job`)."""
    args = build_parser().parse_args(argv)
    made: list[Job] = []

    def make_job() -> Job:  # connects inside the job shell, which reports a failure
        made.append(cryosparc_job(connect(args.url), args, options_from_namespace(args)))
        return made[-1]

    status = run_job(PROG, make_job)
    if status != EXIT_OK:
        if made and made[-1].destination.job is not None:
            say(PROG, "the job is marked failed")
        return status
    job = made[-1].destination.job
    print(f"{PROG}: job {job.project_uid}-{job.uid} completed", flush=True)
    if not args.queue_reconstruction:
        return EXIT_OK
    try:
        rec = queue_reconstruction(made[-1].destination.project, args.workspace, job.uid,
                                   args.mask, args.lane)
    except Exception as exc:  # the refinement is saved; only the follow-up failed
        say(PROG, f"could not queue the reconstruction: {exc}")
        return EXIT_FAILED
    print(f"{PROG}: queued {rec.project_uid}-{rec.uid} ({RECONSTRUCT_JOB_TYPE}) on "
          f"{job.uid}.particles; when it completes, compare its FSC with the original "
          f"refinement's, or refine again: --volume {rec.uid}.volume", flush=True)
    return EXIT_OK


def console():
    """The ``csrefine-cryosparc`` console script."""
    console_exit(main)


if __name__ == "__main__":
    console()
