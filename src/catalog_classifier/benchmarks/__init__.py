"""Measurement only: how fast and how costly the product's code is on this machine, never part of what it does.

loop_speed (training and inference loops against a naive loop and the matmul peak), compile_speed (torch.compile
in a child process), frozen_speed (frozen head against full fine-tuning), batch_predict_speed (predict on a folder,
by part), suite (every model side by side from params), results_page (the figures as Markdown tables),
prediction_runtimes (PyTorch variants against ONNX Runtime), system_metrics_cost (MLflow system metrics' price),
tuning_storage_cost (Optuna storage per trial), mlflow_logging_latency (log_batch on the team stack), load_test (an
HTTP endpoint under N clients), isolated_call (a function in a child process with a time limit). Imports every
library layer it measures; no library layer imports it (stages' bench entry points and flows' bench commands do).
"""
