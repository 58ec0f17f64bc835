"""The probe runner: sends the active health probes the model defines and reports each
result back through `Director.probe_result` (docs/design.rst, "Probes")."""
