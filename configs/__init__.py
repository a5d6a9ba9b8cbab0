"""The emu catalog (TOML): systems, models and plans. Installed as `emu.configs`."""
