"""The education-stage prompts that distill asks the teacher and synth asks the synthesizer.

Both stages must build byte-identical prompts from the same text (the synthesizer is trained on
the teacher's prompts), so the library, the windowing, the seeded (stage, variant) draw and the
reading of a completion live here, below both stages, rather than in either of them.
"""
