"""emu: a differentiable emulator of AI clusters."""
