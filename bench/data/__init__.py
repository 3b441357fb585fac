"""Data: data sets held as tensors, the device-side loader, image folders, where files are.

Kept free of imports: ``bench.data.files`` is read without torch (a cached dry run).
"""
