"""Runs written where researchers already look: TensorBoard, MLflow and Weights & Biases.

``settings`` is the torch-free shape of a run's ``log`` setting (which trackers, where), read by the
run schema; ``tracker`` is the object a run's process hands its epochs and summary to, one adapter
per tracker behind one interface (``tensorboard_log``, ``mlflow_log``, ``wandb_log``); ``store_export``
writes a finished store's runs as TensorBoard runs.
"""
