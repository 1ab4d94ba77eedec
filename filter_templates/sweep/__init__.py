"""Sweeps: a grid of training runs, a results store, and engines that run it.

``grid`` says what to run, ``store`` remembers what happened (SQLite), ``local`` and
``ray_engine`` run it here or on a Ray cluster. Import the submodules directly; this package
imports nothing heavy.
"""
