"""The IOS-like command language: declarations (registry, commands/), the walker
(grammar), sessions, and the prompt_toolkit front end (repl)."""
