"""`qvl-compile serve`: an OpenAI-compatible API over the torch-free runtime (the optional `serve` extra)."""
