"""Offline data preparation: documents → tokenizer → segments → shards + manifest, in one run or in slices.

sources.py            documents from files, folders, globs and 🤗 datasets, in a deterministic order; records checked
tokenizer_training.py a byte-fallback SentencePiece tokenizer with BART's special ids
tasks.py              the inputs cut into tasks a worker reads on its own (byte ranges, whole inputs)
worker.py             a worker: reads, splits, tokenizes (encoding.py, segmenting.py), writes shards (writer.py)
scheduler.py          the main process's side: where each task's documents go, when a shard is complete
executor.py           running the workers' jobs, in worker processes or in this one
pipeline.py           the sharding pipeline: `tokenize_into` (tasks → workers → shards), manifest
progress.py           the progress bar (a terminal) or lines (a log)
writer.py             shards and their pieces, committed atomically, recorded for resuming
output.py             the output folder's state: fresh, resumable, finished, or refused
slices.py             sharding in slices (one Slurm array task each) and their merge
sharding.py           `shard_documents`, the entry point
summary.py            `ShardingSummary`, what a run read, wrote and skipped
verify.py             verifying a SHARD_DIR against its manifest; corpus statistics
"""
