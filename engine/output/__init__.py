"""What leaves a run: the dataset fold, export formats, the `show` summary and diversity figures."""
