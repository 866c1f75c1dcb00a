"""Mini-HAWAII: the HAWAII pipeline (Wang et al., NeurIPS 2025, arXiv 2506.19072) in miniature on a CPU.

A synthetic visual-QA world (:mod:`.world`), expert teachers trained on its aspects (:mod:`.experts`),
the four ablation rows run through the engine (:mod:`.variants`, :mod:`.pipeline`), held-out
evaluation (:mod:`.evaluate`) and the report (:mod:`.report`). Run ``python -m experiments.mini_hawaii``.
"""
