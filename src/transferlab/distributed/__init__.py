"""Beyond one process on existing engines: Ray Data for extraction, torchrun/DDP for fine-tuning.

Both engines are optional extras; importing this package imports neither.
"""
