"""The influence stage (not built yet: `mathsynth influence` says so and exits non-zero)."""
