"""The pretrain stage (not built yet: `mathsynth pretrain` says so and exits non-zero)."""
