"""Training data: the embedded synthetic talking-head set (`synthetic`), the TFDS array_record clip dataset
(`tfds_clips`, built by `python -m r3p.data.build`; read by `records`), source selection from a config
(`sources.make_source`) and the Grain pipeline (`pipeline`)."""
