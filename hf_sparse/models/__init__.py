"""Model families of hf-sparse: one folder per family, transformers-style."""
