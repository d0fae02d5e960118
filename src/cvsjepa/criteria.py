"""The three CVS criteria, in the datasets' column order (C1, C2, C3). Every array, CSV column and
JSON list in cvsjepa is in this order. Their human-readable names differ between datasets (the
Endoscapes README and the SAGES challenge word them differently), so they are a per-dataset display
setting (``data.criteria``), never logic."""

CRITERIA = ("C1", "C2", "C3")
