"""The ``mathsynth`` CLI, config loading, the generic generation run, and Slurm submission."""
