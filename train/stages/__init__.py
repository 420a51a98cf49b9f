"""Training stages: each module defines `build_model(config, rngs)`, `param_group(path)` and `g_loss(...)`."""
