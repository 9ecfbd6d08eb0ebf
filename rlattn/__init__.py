"""rlattn: reinforcement-learning fine-tuning of LLM reasoning with attention-guided credit.

Plain GRPO gives every token of a response the same advantage. rlattn reweights each token's
advantage by credit read off the policy's own attention (WAAD preplan tokens, FAI anchor tokens;
Li et al., arXiv 2510.13554), on top of TRL's GRPOTrainer.

Sub-packages: ``rlattn.credit`` (attention statistics and credit strategies), ``rlattn.rewards``
(reward functions), ``rlattn.rollouts`` (generation backends and rollout records), ``rlattn.data``
(bundled math sets, Countdown), ``rlattn.models`` (embedded default model, model resolution).
"""

__version__ = "0.1.0"
