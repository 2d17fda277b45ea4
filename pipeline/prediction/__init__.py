"""`pipeline predict`: classify a user's image files and folders with a trained model.

files.py finds and decodes the files as the split stage decodes an image folder; choice.py
picks the model (`--model`, else the registry's `champion`, else the best strategy's
`model.keras` by the evaluate stage's test accuracy); classifier.py loads it with its class
names; results.py predicts in batches and writes one CSV row per file.
"""
