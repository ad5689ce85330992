"""Data for petal: the synthetic shapes data set, hub and folder sources, tokenizer and collation."""
