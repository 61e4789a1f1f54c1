"""Released Qwen3-VL architectures (config.json + preprocessor_config.json only, no weights)."""
