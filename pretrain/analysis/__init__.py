"""The paper's analyses: effective receptive field (Appendix B), kernel weights (F), shape bias (C)."""
