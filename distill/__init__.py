"""The distill stage (not built yet: `mathsynth distill` says so and exits non-zero)."""
