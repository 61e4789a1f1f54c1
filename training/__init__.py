"""Training the embedded model on the shapes suite (needs torch and transformers)."""
