"""RELION's own pipeliner runs csrefine-relion as an External job."""

import shutil
from pathlib import Path

import pytest
import starfile
from relion_tools import RelionError, run_relion


@pytest.mark.relion
def test_relion_pipeliner_runs_the_external_job(example_project, relion):
    if shutil.which("csrefine-relion") is None:
        pytest.fail("csrefine-relion is not on PATH: install the package (pip install -e .)")
    assert Path("default_pipeline.star").is_file()  # the example is a RELION project
    options = ";".join([
        "External executable: == csrefine-relion",
        "Input particles:  == Refine3D/job002/run_data.star",
        "Input 3D reference:  == Refine3D/job002/run_class001.mrc",
        "Input 3D mask:  == MaskCreate/job003/mask.mrc",
        "Param1 - label: == kmax_A", "Param1 - value: == 3.4",
        "Param2 - label: == device", "Param2 - value: == cpu"]) + ";"
    run_relion(["relion_pipeliner", "--addJob", "External", "--addJobOptions", options])
    try:
        run_relion(["relion_pipeliner", "--RunJobs", "External/job004/"], timeout_s=600)
    except RelionError as exc:  # e.g. csrefine-relion died before writing an exit file
        err = Path("External/job004/run.err")
        pytest.fail(f"{exc}\nrun.err: {err.read_text() if err.exists() else '(none)'}")
    pipeline = starfile.read("default_pipeline.star", always_dict=True)
    procs = pipeline["pipeline_processes"]
    row = procs[procs["rlnPipeLineProcessName"] == "External/job004/"]
    assert int(row["rlnPipeLineProcessStatus"].iloc[0]) == 2, Path("External/job004/run.err").read_text()
    nodes = pipeline["pipeline_nodes"]
    node = nodes[nodes["rlnPipeLineNodeName"] == "External/job004/particles_csrefine.star"]
    assert len(node) == 1 and int(node["rlnPipeLineNodeType"].iloc[0]) == 3
    assert "optics group" in Path("External/job004/run.out").read_text()
    # the example's own jobs stay in the pipeline, and the External job is connected to them
    assert {"Extract/job001/", "Refine3D/job002/", "MaskCreate/job003/"} <= set(
        procs["rlnPipeLineProcessName"])
    edges = pipeline["pipeline_input_edges"]
    inputs = set(edges[edges["rlnPipeLineEdgeProcess"] == "External/job004/"]["rlnPipeLineEdgeFromNode"])
    assert "Refine3D/job002/run_data.star" in inputs
