"""layerport's built-in layer types, each an ordinary plugin in its own module."""
