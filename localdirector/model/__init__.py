"""The patent's object model (FIG. 2-3D): what the shell edits, only through Director's
methods, and the data plane reads (docs/design.rst, "Object model")."""
