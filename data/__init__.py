"""Package data: the demo study (demo.toml, roles_demo.csv) and the hand labels (labels/)."""
