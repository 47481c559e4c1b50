"""Helpers every layer may use: one JSON encoder, progress bars, headless plotting, the output-folder
guard. They import nothing else of transferlab, so any module can depend on them."""
