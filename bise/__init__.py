"""BISE: bias-invariant subnetwork extraction (De Moura Matos et al., CVPR 2026)."""
