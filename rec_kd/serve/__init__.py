"""Serving a trained model: ONNX export, the Recommender (ONNX Runtime, no JAX), the CLI, the web page."""
