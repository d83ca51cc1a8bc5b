"""What a user sees in MLflow: the Markdown notes, the UI's links and views, and the export of a
trial's adapter for deployment."""
