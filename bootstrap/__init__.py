"""Deploy-time helpers: the EMR bootstrap action, dependency locks and the staging command."""
