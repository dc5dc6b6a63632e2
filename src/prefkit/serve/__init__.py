"""The annotation and arena web app (`prefkit serve`)."""
