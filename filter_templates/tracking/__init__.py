"""Runs written where researchers already look: TensorBoard, MLflow and Weights & Biases.

``tracker`` holds the object a run's process hands its epochs and summary to; behind it, one
adapter per tracker implements one interface (``adapter``): ``tensorboard_log``, ``mlflow_log``,
``wandb_log``. The shape of a run's ``log`` setting lives below the run schema, in
``core.trackers``; ``report.tensorboard`` writes a finished store's runs with the same tags.
"""
