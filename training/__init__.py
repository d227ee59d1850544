"""cavsync.training: pretraining, evaluation, synthetic data (built on `model`)."""
