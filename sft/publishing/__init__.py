"""Publishing a finished run: its model card (card.py) and the push to a hub (hub.py)."""
