"""Training: one loop (vqcodec.training.loop) that every phase runs as a Task."""
