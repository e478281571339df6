"""The training machinery `sft.train` assembles: the classifier built from a checkpoint
(model), what trains (finetune) at which rate (optim), on which device and precision
(accelerator), the step loop and its evaluations (loop, state), checkpoints and resume
(checkpoint), frozen-feature caching (feature_cache), cheap dropout (dropout) and experiment
trackers (trackers)."""
