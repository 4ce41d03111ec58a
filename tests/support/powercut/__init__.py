"""The power-cut harness (issue 24): a FUSE file system that loses unsynced writes on command
(lazyfs.py), and the disk and agent that run on it (disk.py)."""
