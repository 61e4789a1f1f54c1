"""Golden data and its generator: transformers' answers for each family's tiny model (`store.py` reads them torch-free)."""
