"""RELION adapter for csrefine: STAR I/O and the External-job protocol."""
