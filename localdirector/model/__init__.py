"""The patent's object model (FIG. 2-3D): what the shell edits and the data plane reads."""
