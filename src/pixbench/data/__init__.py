"""Dataset sources, the uint8 cache, and batched on-tensor augmentation."""
