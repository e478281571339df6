"""sft: supervised fine-tuning of Hugging Face checkpoints for classification."""

__version__ = "0.1.0"
