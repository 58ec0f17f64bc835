"""Command declarations, grouped by what they act on; every module here is loaded by
`registry.load_commands()`, so a new group is a new file and nothing else."""
