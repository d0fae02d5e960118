"""Training: the one loop (``loop.py``) and the two things it trains, a classifier (``cvsjepa train``,
``classifier.py``) and a bank of heads over a feature store (``cvsjepa sweep``, ``sweep.py``)."""
