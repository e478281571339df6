"""`evaluate` metric modules shipped with sft, so metrics load offline.

`evaluate.load("accuracy")` fetches its script from the Hub; these are loaded by path instead.
Each folder holds one module named after the folder, as `evaluate.load(<dir>)` expects.
"""
