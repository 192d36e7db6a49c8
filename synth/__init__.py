"""The synth stage (not built yet: `mathsynth synth` says so and exits non-zero)."""
