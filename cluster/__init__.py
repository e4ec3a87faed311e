"""The driver and everything that touches the cluster: CLI, config, placement, tracking, checkpoints, manifests."""
