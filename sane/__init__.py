"""SANE: Specify ANd Edit, ambiguous instruction decomposition and guidance for instruction-based image editing."""
