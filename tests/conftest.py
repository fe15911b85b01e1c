"""Shared fixtures: the atomic model, RELION availability (loud skips), small example projects."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "plugin" / "data" / "1BD2.cif.gz"  # PDB 1BD2, shipped with the package

RELION_TOOLS = ("relion_project", "relion_reconstruct", "relion_ctf_refine", "relion_pipeliner",
                "relion_postprocess")


def cuda_available() -> bool:
    """CuPy importable and a CUDA GPU present (the GPU tests run only then)."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, or no driver
        return False


def relion_missing() -> list[str]:
    return [t for t in RELION_TOOLS if shutil.which(t) is None]


def require_relion():
    """Skip loudly when Debian's RELION is not installed (.ci/run installs it)."""
    missing = relion_missing()
    if missing:
        msg = (f"RELION NOT INSTALLED ({', '.join(missing)} missing): this test needs Debian's "
               f"relion package (apt-get install -y relion); it was SKIPPED, not passed")
        warnings.warn(msg)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def structure():
    import gemmi
    if not MODEL.is_file():
        pytest.fail(f"atomic model {MODEL} missing from the package")
    return gemmi.read_structure(str(MODEL))


@pytest.fixture(scope="session")
def small_map(structure):
    """1BD2 map, box 64, 1.6 A pixels."""
    from csrefine.atomic_map import density_map
    return density_map(structure, 64, 1.6, b_factor_A2=10.0)


@pytest.fixture()
def example_project(tmp_path, monkeypatch):
    """A small RELION project (2 optics groups, 600 particles each; true Cs 3.0 / 2.7, nominal
    2.7) with the working directory set to it, as RELION runs External jobs."""
    from csrefine.example import make_example
    info = make_example(tmp_path, n_per_group=(600, 600), model_path=MODEL, seed=3, box=64)
    monkeypatch.chdir(tmp_path)
    return info


def rng(seed=0):
    return np.random.default_rng(seed)
