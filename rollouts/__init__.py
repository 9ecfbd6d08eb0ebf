"""rlattn.rollouts: generation backends and rollout records.

Not built yet: see the README's status table.
"""
