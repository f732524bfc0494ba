"""Code shared by two or more papers: downloads, datasets and utilities."""
