"""What people read of a pipeline run: the HTML report and the model card.

content.py holds what the page shows and reads it from a run's outputs; views.py and
formatting.py turn it into the template's strings, images.py embeds the pictures, and html.py
renders and writes the page. model_card.py writes a registered version's card from the records.

Nothing is imported here: the promote stage imports model_card.py alone, so editing the page's
code re-runs the report stage only, never the registry gate.
"""
