"""The training engine behind ``kdkit run``: build, step, stages, distribution, checkpoints, logs, report.

Entry point: :func:`kdkit.engine.run.run_recipe`.
"""
