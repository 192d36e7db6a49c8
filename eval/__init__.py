"""The eval stage (not built yet: `mathsynth eval` says so and exits non-zero)."""
