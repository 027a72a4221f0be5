"""The one-machine side of Verger: the `verger` command and the embedded demo."""
