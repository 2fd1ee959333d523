"""The clustering step of every epoch (METHODS §1 steps 2-3, §2 camera-aware proxies)."""
