"""Model definitions. Importing `memformers.models.membart` registers MemBART with the transformers Auto classes."""
