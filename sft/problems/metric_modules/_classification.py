"""What the classification metric modules (accuracy, f1) share: their inputs, integer class ids,
or in the 'multilabel' configuration one 0/1 vector per example. Imported as a module
(`import ... as base`), so each metric module's own class stays the only metric class in its
namespace (how `evaluate.load` finds it)."""

import datasets


def features(config_name: str) -> datasets.Features:
    value = datasets.Value("int64")
    if config_name == "multilabel":
        value = datasets.Sequence(value)
    return datasets.Features({"predictions": value, "references": value})
