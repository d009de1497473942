"""Publishing to the Hugging Face Hub, model cards, and a local read-only Hub for round trips."""
