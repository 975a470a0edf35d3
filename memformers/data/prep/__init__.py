"""Offline data preparation: documents → tokenizer → segments → shards + manifest, in one run or in slices.

sources.py            documents from files, folders, globs and 🤗 datasets, in a deterministic order
tokenizer_training.py a byte-fallback SentencePiece tokenizer with BART's special ids
segmenting.py         a document's token ids → consecutive segments, cut at sentence ends
pipeline.py           the sharding pipeline (workers tokenize and segment, the main process writes)
writer.py             one shard at a time, committed atomically, recorded for resuming
output.py             the output folder's state: fresh, resumable, finished, or refused
slices.py             sharding in slices (one Slurm array task each) and their merge
sharding.py           `shard_documents`, the entry point
summary.py            `ShardingSummary`, what a run read, wrote and skipped
verify.py             verifying a SHARD_DIR against its manifest; corpus statistics
"""
