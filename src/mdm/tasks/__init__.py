"""Task registry and task packs (gsm8k, hitab, openscience, arithmetic)."""
