"""Studies: multi-method experiments built on the harness pieces (see each module)."""
