"""Files, written once and right: atomic writes, the sharded split store, hashing.

The pipeline's own files (reports, splits, downloads, extracted datasets) are written through
`atomic_write` or `atomic_directory`, so a failure never leaves a truncated report, a
half-written split or a half-extracted dataset behind. Files that libraries write themselves
(Keras models, figures, CSVs) go into a stage's out folder, which DVC discards on failure.

The names of the files inside the folders that `dvc.yaml` passes between stages are also
defined here, once: the stage that writes a folder and the stages that read it
share them.

One module per job: files.py (atomic writes, file names), hashing.py (image digests),
reading.py (the store's index and readers), writing.py (the split stage's writer). Import
from `pipeline.store`: the names below are its contract.
"""

from __future__ import annotations

from pipeline.store.files import (  # noqa: F401 - the package's contract
    CLASSES_FILE,
    DROPPED_CONFLICTS_KEY,
    EXTRACTOR_FILE,
    FEATURES_INFO_FILE,
    FIRST_KERNEL_FILE,
    HISTORY_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    PLAN_FILE,
    RUN_FILE,
    SOURCES_COLUMNS,
    SPLITS,
    atomic_directory,
    atomic_write,
    copy_file,
    fsync_path,
    read_json,
    sha256_of,
    spreadsheet_safe,
    write_classes,
    write_csv,
    write_json,
    write_text,
)
from pipeline.store.hashing import (  # noqa: F401 - the package's contract
    image_digest,
    image_digests,
    keyed_position,
    members_digest,
    store_version,
    write_manifest,
)
from pipeline.store.reading import (  # noqa: F401 - the package's contract
    SHARD_BYTES,
    SHARD_PARTS,
    SHARDS_DIR,
    STORE_FILE,
    STORE_FORMAT,
    ArraySplit,
    ImageSplit,
    NpyRows,
    Shard,
    SplitReader,
    StoreIndex,
    data_version,
    open_split,
    open_splits,
    read_store_index,
)
from pipeline.store.writing import (  # noqa: F401 - the package's contract
    SplitRows,
    StoreReport,
    shard_name,
    verify_images,
    write_npy_rows,
    write_store,
    write_store_from_arrays,
)
