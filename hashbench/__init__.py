"""hashbench's Python API (the harness is the ``benchmark`` package; plugins live in the checkout).

    import hashbench
    rows = hashbench.evaluate(model, dataset="fashion_mnist", attacks="standard")   # pandas DataFrame
    victim = hashbench.load_victim(method="dpsh", backbone="smallcnn_fc500", bits=32, grid="default")
    card = hashbench.export_victim("exported/", method="dpsh", backbone="smallcnn_fc500", bits=32, grid="default")
"""
from benchmark.api import attack_suite, evaluate, export_victim, load_victim, summary

__all__ = ["attack_suite", "evaluate", "export_victim", "load_victim", "summary"]
