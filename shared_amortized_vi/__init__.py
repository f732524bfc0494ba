"""SAMOVAR: meta-learning with shared amortized variational inference (Iakovleva, Verbeek, Alahari, ICML 2020)."""
