"""PyTorch side of edge_xmr (needs the ``[train]`` extra). Not imported by ``import edge_xmr``."""

from .bases import ModelDirError, build, load, save
from .joint import JointModel

__all__ = ["JointModel", "ModelDirError", "build", "load", "save"]
