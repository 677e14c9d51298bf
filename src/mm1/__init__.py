"""mm1: MM1 / MM1.5 multimodal LLMs end to end."""

from mm1.config import ConfigError, MM1Config, load_config
from mm1.model.mllm import MM1Model

__version__ = "0.1.0"


def load(path) -> MM1Model:
    """Restore a model saved with `MM1Model.save_pretrained` (weights, config, tokenizer and processor)."""
    return MM1Model.from_pretrained(path)


__all__ = ["ConfigError", "MM1Config", "MM1Model", "load", "load_config"]
