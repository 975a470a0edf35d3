"""Online reading for training: the lane schedule (schedule.py, pure) and `SegmentStreamLoader` (loader.py)."""
