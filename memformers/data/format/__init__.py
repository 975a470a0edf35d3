"""The SHARD_DIR format shared by data preparation (which writes it) and the stream (which reads it).

* manifest.py — the directory layout, `manifest.json`, the per-document index dtype.
* samples.py  — one document's sample: tar members encoded / decoded, keys, the archive trailer.
* reader.py   — `SplitReader`: random access to a split's documents, CRC-checked.
* mixing.py   — `mixing_problems` / `check_mixable`: whether several SHARD_DIRs can feed one training mixture.
"""
