"""Data: MedVidBench-format reader, Parquet conversion, task-balanced sampler, video decoding, synthetic dataset."""
