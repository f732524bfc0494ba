"""Dataset loaders shared by several papers."""
