"""Multi-domain learning with modulation adapters (Iakovleva, Alahari, Verbeek, arXiv 2307.08528)."""
