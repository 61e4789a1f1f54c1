"""The shapes task suite: synthetic visual questions whose answers are right or wrong (torch-free)."""
