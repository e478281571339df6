"""Hydra plugins shipped with sft (Hydra finds them under the `hydra_plugins` namespace)."""
