"""The synth stage: train the small synthesizer (``synth train``), mass-produce problems with it
(``synth generate``), and filter, decontaminate and dedup them into a pre-training set
(``synth filter``)."""
