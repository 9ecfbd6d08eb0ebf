"""rlattn.rewards: reward functions (placeholder until the rewards module lands)."""
