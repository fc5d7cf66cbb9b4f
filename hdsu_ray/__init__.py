"""hdsu-ray: hierarchical dual-strategy unlearning for medical language models on Ray."""

__version__ = "0.1.0"
