"""Re-implementation of "How I Met Your Bias": bias amplification across diffusion samplers (Roos et al., WACV 2026)."""
