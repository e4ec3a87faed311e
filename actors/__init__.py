"""Ray actors: thin shells over the pure code in rewards/ and learner/ (rollout, reward workers, judge, normalizer)."""
