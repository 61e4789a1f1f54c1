"""The embedded default model: a tiny seeded Qwen3-VL checkpoint, and random real-size ones."""
