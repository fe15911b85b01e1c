"""The user's settings of a refinement: one record, one validation, one table of options.

Every entry point (``csrefine refine``, the RELION External job, the cryoSPARC job) builds its
options from :data:`USER_OPTIONS` and validates them with :meth:`RefineOptions.validate`, so a
setting has one name, one default, one help text and one check. Command-line flags use dashes
(``--resolution-high-A``); RELION's External-job labels use underscores
(``--resolution_high_A``). Older names stay accepted as aliases (``kmin_A`` / ``kmax_A``, which
held resolutions in Å despite their names).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields, replace

from .backends import check_device
from .errors import InputError, shown
from .fsc import FSC_THRESHOLD

REFERENCE_HALF_CHOICES = ("opposite", "own")
#: ``keep_round_maps``: keep the half maps of rounds 2.. in the output directory, or remove them.
KEEP_ROUND_MAPS_CHOICES = ("yes", "no")
#: At most this many rounds (each rebuilds both half maps; the loop converges in two or three).
MAX_ROUNDS = 10


@dataclass(frozen=True)
class RefineOptions:
    """User-facing settings (units in the names).

    resolution_low_A, resolution_high_A : the fitted band, in Å (resolution_high_A None: where
        the masked half-map FSC drops below :data:`FSC_THRESHOLD`, capped at each group's
        Nyquist).
    subsets : independent random subsets refined separately (each of
        :data:`csrefine.group_fit.CELLS_PER_SUBSET` jackknife blocks).
    cs_search_mm : half-width of the global Cs search around the nominal value.
    min_particles : groups with fewer particles are not refined.
    batch_size : particles per batch (None: the backend's choice, 256 on the CPU); memory is
        bounded by two batches of images plus the backend's work arrays.
    device : "cpu" (the C kernel) or "cuda" (CuPy on a CUDA GPU).
    reference_half : "opposite" (default) predicts each particle from the half map it did not
        contribute to; "own" from its own half map (rlnRandomSubset), as relion_ctf_refine 4.0+
        does. The own half map contains the particle's own noise, which correlates with its
        nominal CTF and biases the fit toward the reconstruction's CTF: on 10k relion_project
        particles (box 128, 2.5 Å) true Cs 3.0 from nominal 2.7 gave 2.70 with the own half map
        and 3.001 with the opposite one.
    rounds : refinement rounds (1: refine against the given half maps only); each further round
        refines against half maps rebuilt from the particles with the previous round's Cs
        (:mod:`csrefine.rounds`; needs an adapter that can reconstruct, e.g. relion_reconstruct),
        stopping early when every group's change is below its sigma.
    keep_round_maps : "yes" keeps the rebuilt half maps in the output directory, "no" removes them.
    """

    resolution_low_A: float = 20.0
    resolution_high_A: float | None = None
    subsets: int = 3
    threads: int = 1
    batch_size: int | None = None
    device: str = "cpu"
    cs_search_mm: float = 1.5
    seed: int = 0
    min_particles: int = 100
    reference_half: str = "opposite"
    rounds: int = 1
    keep_round_maps: str = "yes"

    def validate(self) -> "RefineOptions":
        """Return self if every setting is usable, else raise InputError naming the setting."""
        _positive_finite("resolution_low_A", self.resolution_low_A)
        if self.resolution_high_A is not None:
            _positive_finite("resolution_high_A", self.resolution_high_A)
            if not self.resolution_high_A < self.resolution_low_A:
                raise InputError(f"resolution_high_A ({self.resolution_high_A} Å) must be finer, "
                                 f"i.e. smaller, than resolution_low_A ({self.resolution_low_A} Å)")
        _positive_finite("cs_search_mm", self.cs_search_mm)
        for name, minimum in (("subsets", 2), ("threads", 1), ("min_particles", 0)):
            _integer_at_least(name, getattr(self, name), minimum)
        if self.batch_size is not None:
            _integer_at_least("batch_size", self.batch_size, 1)
        _integer_at_least("seed", self.seed, 0)
        if self.reference_half not in REFERENCE_HALF_CHOICES:
            raise InputError(f"reference_half must be one of {', '.join(REFERENCE_HALF_CHOICES)}, "
                             f"got {shown(self.reference_half)}")
        _integer_at_least("rounds", self.rounds, 1)
        if self.rounds > MAX_ROUNDS:
            raise InputError(f"rounds must be at most {MAX_ROUNDS}, got {shown(self.rounds)}")
        if self.keep_round_maps not in KEEP_ROUND_MAPS_CHOICES:
            raise InputError(f"keep_round_maps must be one of {', '.join(KEEP_ROUND_MAPS_CHOICES)}, "
                             f"got {shown(self.keep_round_maps)}")
        check_device(self.device)
        return self


def _positive_finite(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise InputError(f"{name} must be a positive finite number, got {shown(value)}")


def _integer_at_least(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer of at least {minimum}, got {shown(value)}")


@dataclass(frozen=True)
class UserOption:
    """One user-settable field of :class:`RefineOptions`: its type, help and older names."""

    field: str
    kind: type
    help: str
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] | None = None
    flag: str | None = None  # the option's name on command lines when it is not the field's
    default_text: str | None = None  # how the help states a default of None

    @property
    def name(self) -> str:
        return self.flag or self.field


USER_OPTIONS = (
    UserOption("resolution_low_A", float, "lowest resolution fitted, Å", ("kmin_A",)),
    UserOption("resolution_high_A", float, "highest resolution fitted, Å", ("kmax_A",),
               default_text=f"where the masked half-map FSC drops below {FSC_THRESHOLD}"),
    UserOption("subsets", int, "random subsets refined independently"),
    UserOption("cs_search_mm", float, "half-width of the Cs search around the nominal value, mm"),
    UserOption("min_particles", int, "optics groups with fewer particles keep their nominal Cs"),
    UserOption("threads", int, "threads", flag="j"),
    UserOption("batch_size", int, "particles per batch (bounds memory)",
               default_text="256 on the CPU, about 256 MiB of images on the GPU"),
    UserOption("device", str, "where the kernel runs: cpu (C) or cuda (CuPy, a CUDA GPU)"),
    UserOption("seed", int, "seed of the random subsets"),
    UserOption("reference_half", str,
               "predict each particle from the opposite half map (unbiased) or its own "
               "(as relion_ctf_refine 4.0+)", choices=REFERENCE_HALF_CHOICES),
    UserOption("rounds", int,
               "refinement rounds: after each, rebuild the half maps with the refined Cs "
               "(relion_reconstruct) and refine again; stops early when every group's change is "
               "below its sigma"),
    UserOption("keep_round_maps", str,
               "keep the rebuilt half maps (roundN_half1/2.mrc) in the output directory",
               choices=KEEP_ROUND_MAPS_CHOICES),
)

_DEFAULTS = {f.name: f.default for f in fields(RefineOptions)}


def add_option_arguments(parser: argparse.ArgumentParser, style: str = "cli",
                         exclude: tuple[str, ...] = ()) -> None:
    """Add every :data:`USER_OPTIONS` entry to ``parser``.

    style "cli": ``--resolution-high-A`` (dashes); style "relion": ``--resolution_high_A``
    (RELION's parameter labels; a label without a value, which RELION passes for an empty
    value field, leaves the default); aliases follow the name. Defaults are those of
    :class:`RefineOptions`, shown in the help; an option not given is left at its default.
    ``exclude``: fields an entry point does not offer.
    """
    for opt in USER_OPTIONS:
        if opt.field in exclude:
            continue
        default = _DEFAULTS[opt.field]
        shown = opt.default_text if default is None else default
        names = [flag(opt.name, style)] + [flag(a, style) for a in opt.aliases]
        parser.add_argument(*names, dest=opt.field, type=opt.kind, choices=opt.choices,
                            default=None, metavar=None if opt.choices else _METAVARS[opt.kind],
                            help=f"{opt.help} (default: {shown})", **bare_flag(style))


_METAVARS = {float: "X", int: "N", str: "NAME"}


def flag(name: str, style: str) -> str:
    """The option ``--name``: dashes for style "cli", RELION's underscores for style "relion"."""
    return "--" + (name.replace("_", "-") if style == "cli" else name)


def bare_flag(style: str) -> dict:
    """``add_argument`` keywords for style "relion": RELION passes a parameter whose value field
    is empty as a bare flag, which then means the default (None)."""
    return {"nargs": "?", "const": None} if style == "relion" else {}


def options_from_namespace(args: argparse.Namespace) -> RefineOptions:
    """A validated :class:`RefineOptions` from parsed arguments (None: the default)."""
    given = {opt.field: getattr(args, opt.field) for opt in USER_OPTIONS
             if getattr(args, opt.field, None) is not None}
    return replace(RefineOptions(), **given).validate()
