"""cryoSPARC adapter for csrefine: dataset conversion, offline CLI run, and the external job."""
