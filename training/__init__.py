"""The one training core: ``synth train`` (SFT of the synthesizer) and ``pretrain`` (continued
pre-training + SFT of the final model) both train through it."""
