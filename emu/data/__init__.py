"""Data shipped with emu: a copy of the published measurements used by `emu validate`."""
