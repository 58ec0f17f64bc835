"""The IOS-like command language: the grammar walker, the registry declarations go
into, sessions, configuration files and the prompt_toolkit front end (repl). The
declarations themselves are in `localdirector/commands/`."""
