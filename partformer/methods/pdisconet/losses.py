"""PDiscoNet's objective: the same training step as PDiscoFormer's
(:class:`partformer.methods.pdiscoformer.losses.PDiscoObjective`, their
``PDiscoTrainer._run_batch``) with PDiscoNet's weights (:class:`~.config.PDiscoNetConfig`:
classification 1, presence 1, concentration 1000, equivariance 1, orthogonality 1, the rest 0;
the original's presence on the 2-cell-cropped K+1 maps via ``presence_crop`` /
``presence_include_background``)."""
from partformer.methods.pdiscoformer.losses import LOSS_KEYS, PDiscoObjective

PDiscoNetObjective = PDiscoObjective

__all__ = ["LOSS_KEYS", "PDiscoObjective", "PDiscoNetObjective"]
