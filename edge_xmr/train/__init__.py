"""Training of the joint model (needs the ``[train]`` extra)."""
