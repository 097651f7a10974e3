"""One module per ``layerport`` command, each named after its command."""
