"""The distill stage: a teacher writes problems from corpus texts with education-stage prompts;
validated outputs form the distillation set and its SFT export (``mathsynth distill``)."""
