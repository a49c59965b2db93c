"""One module per strategy: its declaration (``STRATEGY``) and its batched kernel."""
