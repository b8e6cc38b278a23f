"""The model: where it comes from and what it returns.

A checkpoint, an ``--arch`` callable or the embedded default (:mod:`.source`, :mod:`.zoo`),
loaded safely with nothing downloaded (:mod:`.checkpoint`, :mod:`.offline`), and which of its
outputs holds the logits (:mod:`.outputs`). Importing this package imports none of its modules.
"""

__all__: list[str] = []
