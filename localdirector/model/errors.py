"""The model's one error: a refused change (docs/design.rst, "Object model")."""


class ModelError(ValueError):
    """A refused change; its text is the one-line error the operator sees."""
