"""Monitoring of a served model: the prediction records it writes, the reference each model
version ships, the drift tests that compare the two, and the page that shows the verdict."""
