"""Losses and advantages (pure torch), the DeepSpeed learner ranks, weight synchronization, SFT, model building."""
