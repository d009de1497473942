"""Deployment: exports for runtimes outside PyTorch."""
