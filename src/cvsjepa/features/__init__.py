"""The feature store: extract V-JEPA 2 tokens once, train and sweep frozen heads from them.

* :mod:`.store`    on-disk format: key, manifest, checksummed shards, the pread reader
* :mod:`.encoding` ``features.dtype``: plain or per-token scaled (int8, float8) tokens on disk
* :mod:`.writer`   creating / resuming a store: atomic checksummed shards, then the manifest
* :mod:`.extract`  ``extract(cfg)``: the frozen backbone over every keyframe clip, resumable
* :mod:`.dataset`  ``open_store_splits(cfg)``: ``SplitData`` whose batches carry ``tokens``
* :mod:`.views`    deterministic spatial views (view 0 = the standard center crop)

``extract`` imports the backbones (transformers) on first use; import it from
``cvsjepa.features.extract``.
"""

from .dataset import StoreDataset, open_store, open_store_splits
from .store import (PREPROCESSING_VERSION, FeatureStore, FeatureStoreError, ShardCorruptError, StoreKeyError,
                    StoreReader, store_key)
from .writer import StoreWriter

__all__ = ["PREPROCESSING_VERSION", "FeatureStore", "FeatureStoreError", "ShardCorruptError", "StoreDataset",
           "StoreKeyError", "StoreReader", "StoreWriter", "open_store", "open_store_splits", "store_key"]
