"""Ray: `qvl-compile batch --ray` (Ray Data) and `qvl-compile serve --ray` (Ray Serve); the `ray` extra."""
