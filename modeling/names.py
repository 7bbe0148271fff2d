"""Names the rest of the stack validates against, standard library only: the recipe's `--help`
(training/config.py) loads this file without importing the package (which imports torch)."""

# attn_implementation values: "auto" resolves to the fastest available (modeling/attention.py)
ATTN_IMPLEMENTATIONS = ("auto", "eager", "sdpa", "flash_attention_2")
