"""Measures of a trained model (sharpness and curvature), free of run folders."""
