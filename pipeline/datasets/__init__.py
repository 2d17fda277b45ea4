"""Dataset sources, download, readers and splitting."""
