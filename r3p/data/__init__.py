"""Training data: the embedded synthetic talking-head set (`synthetic`), the Grain pipeline (`pipeline`)."""
