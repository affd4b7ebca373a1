"""The built-in offline demo: a synthetic LVIS-format data set and tiny stand-in backbones fitted on it."""
