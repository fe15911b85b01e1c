"""``csrefine`` command line: ``csrefine refine ...`` outside RELION's pipeline / cryoSPARC.

Particles given as a ``.star`` file go through the RELION adapter; ``.cs`` files through the
cryoSPARC adapter (``--project-dir`` resolves their ``blob/path``).
"""

from __future__ import annotations

import argparse
import sys

from .errors import AbortRequested, InputError
from .pipeline import RefineOptions


def add_refine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kmin-A", type=float, default=20.0, help="lowest resolution fitted (A), default 20")
    p.add_argument("--kmax-A", type=float, default=None,
                   help="highest resolution fitted (A); default: where the half-map FSC drops below 0.143")
    p.add_argument("--subsets", type=int, default=3, help="random subsets refined independently (default 3)")
    p.add_argument("--cs-search-mm", type=float, default=1.5,
                   help="half-width of the global Cs search around the nominal value (default 1.5 mm)")
    p.add_argument("--min-particles", type=int, default=100,
                   help="groups with fewer particles keep their nominal Cs (default 100)")
    p.add_argument("--j", type=int, default=1, help="threads")
    p.add_argument("--batch-size", type=int, default=None,
                   help="particles per batch (bounds memory; default 256 on the CPU, by box size on "
                        "the GPU)")
    p.add_argument("--device", default="auto", help="cpu (default), cuda, or a backend: numpy, numba, cupy")
    p.add_argument("--seed", type=int, default=0, help="seed for the random subsets")
    p.add_argument("--model", default=None,
                   help="atomic model (mmCIF/PDB) docked in the map: calibrate the pixel size "
                        "against it and say whether the Cs departure is pixel size or Cs")
    p.add_argument("--reference-half", choices=("opposite", "own"), default="opposite",
                   help="predict each particle from the opposite half map (default, unbiased) "
                        "or its own (as relion_ctf_refine 4.0+)")


def options_from_args(args) -> RefineOptions:
    for name in ("kmin_A", "kmax_A", "cs_search_mm"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.subsets < 2:
        raise InputError(f"--subsets must be at least 2, got {args.subsets}")
    if args.j < 1 or (args.batch_size is not None and args.batch_size < 1):
        raise InputError("--j and --batch-size must be at least 1")
    return RefineOptions(k_min_A=args.kmin_A, k_max_A=args.kmax_A, subsets=args.subsets,
                         threads=args.j, batch_size=args.batch_size, device=args.device,
                         cs_search_mm=args.cs_search_mm, min_particles=args.min_particles,
                         seed=args.seed, reference_half=args.reference_half)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csrefine", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("refine", help="refine Cs per optics group")
    p.add_argument("--particles", required=True, help="RELION particle STAR or cryoSPARC .cs file")
    p.add_argument("--half-maps", nargs=2, required=True, metavar=("HALF1", "HALF2"),
                   help="unfiltered half maps (MRC)")
    p.add_argument("--mask", default=None, help="mask for the half-map FSC (MRC)")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--project-dir", default=None,
                   help="cryoSPARC project directory (for .cs particles: blob/path is relative to it)")
    add_refine_options(p)
    e = sub.add_parser("example", help="write a small simulated RELION project to try csrefine on")
    e.add_argument("directory")
    e.add_argument("--model", default=None, help="atomic model to build the map from "
                   "(default: ../shared/data/1BD2.cif.gz if present, else a pseudo-atomic map)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "example":
            from .example import main as example_main
            return example_main([args.directory] + (["--model", args.model] if args.model else []))
        options = options_from_args(args)
        if args.particles.endswith(".cs"):
            from csrefine.cryosparc.offline import run_offline
            run_offline(args, options)
        else:
            from pathlib import Path

            from csrefine.relion.run import run
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            run(args.particles, args.half_maps[0], args.half_maps[1], out, mask=args.mask,
                options=options, progress=lambda s: print(s, flush=True), model=args.model)
    except (InputError, AbortRequested) as exc:
        print(f"csrefine: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
