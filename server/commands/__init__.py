"""The ``phaseboard`` command line: the typer app (``cli``) and the researcher workflows it
runs (``demo``, ``ingest_dir`` + ``ingest_hparams``, ``export``)."""
