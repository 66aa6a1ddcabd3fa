"""The benchmarks of the GPT-4 announcement and the Mosaic gauntlet, one module each, on the eval framework.

Each reads its public data file through `common.data_file` (a missing file is one line naming
it and its source); `common` also holds the multiple-choice scoring they share.
"""
