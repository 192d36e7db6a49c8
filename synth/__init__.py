"""The synth stage: train the small synthesizer (``synth train``), then mass-produce problems with it
(``synth generate``)."""
